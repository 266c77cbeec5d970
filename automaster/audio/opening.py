"""Opening an audio file (a local path or a URI) and saying in words why it cannot be opened."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

import soundfile as sf

from automaster import storage
from automaster.audio.common import AudioError, logger


@contextlib.contextmanager
def _decoder_notes(name: str) -> Iterator[None]:
    """What the C decoders print on the process's stderr while ``name`` is opened or decoded
    (mpg123's "Illegal Audio-MPEG-Header ... Trying to resync" on a damaged MP3) goes to the log
    at INFO, named by the file, not onto the console under a job's progress bar."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to take over: leave it alone
        yield
        return
    with tempfile.TemporaryFile() as notes:
        sys.stderr.flush()
        os.dup2(notes.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            notes.seek(0)
            text = notes.read().decode("utf-8", "replace").strip()
            if text:
                logger.info("%s: the decoder said: %s", name, " / ".join(text.splitlines()))


class _Opened:
    """Context manager: a ``sf.SoundFile`` for a local path or URI, errors turned into AudioError."""

    def __init__(self, path: str | os.PathLike):
        self.name = os.fspath(path)
        self._fileobj = None
        self.sf: sf.SoundFile | None = None

    def __enter__(self) -> sf.SoundFile:
        name = self.name
        try:
            if storage.is_local(name):
                local = storage.local_path(name)
                _check_readable(name, local)
                # bytes: a name that is not UTF-8 (surrogate-escaped str) reaches the C library as it is
                source = os.fsencode(local)
            else:
                source = self._fileobj = storage.open_input_file(name)
            with _decoder_notes(name):
                self.sf = sf.SoundFile(source)
        except AudioError:
            raise
        except sf.LibsndfileError as exc:
            self._close_fileobj()
            raise AudioError(name, _describe_open_error(name, exc)) from exc
        except (sf.SoundFileError, OSError) as exc:
            self._close_fileobj()
            raise AudioError(name, f"cannot open ({exc})") from exc
        return self.sf

    def __exit__(self, *exc_info) -> None:
        if self.sf is not None:
            self.sf.close()
        self._close_fileobj()

    def _close_fileobj(self) -> None:
        if self._fileobj is not None:
            self._fileobj.close()
            self._fileobj = None


def _check_readable(name: str, local: str) -> None:
    """Refuse, before libsndfile sees it, what it would misreport ("System error.") or hang on."""
    if not os.path.lexists(local):
        raise AudioError(name, "file not found")
    if os.path.isdir(local):
        raise AudioError(name, "is a folder, not a file")
    reason = storage.not_regular_reason(local)
    if reason is not None:
        raise AudioError(name, reason)
    try:
        with open(local, "rb"):
            pass
    except PermissionError:
        raise AudioError(name, "permission denied: the file is not readable by this user") from None
    except OSError as exc:
        raise AudioError(name, f"cannot open ({exc.strerror or exc})") from None


def _check_header(name: str, sample_rate: int, channels: int, frames: int) -> None:
    if sample_rate <= 0:
        raise AudioError(name, f"invalid sample rate {sample_rate} in header")
    if channels <= 0:
        raise AudioError(name, f"invalid channel count {channels} in header")
    if frames <= 0:
        raise AudioError(name, "no audio frames (header only)")


def _describe_open_error(name: str, exc: sf.LibsndfileError) -> str:
    """Turn libsndfile's open error (often the misleading 'File does not exist') into words."""
    head = _head_bytes(name)
    if head is not None:
        if len(head) == 0:
            return "empty file (0 bytes)"
        if head.startswith(b"ID3") and not _has_mpeg_sync(head[_id3_end(head) :]):
            return "no audio frames (header only)"
        if _looks_like_text(head):
            return "not an audio file (looks like text)"
    detail = (exc.error_string or "").strip()
    if "does not exist" in detail or not detail:
        detail = "format not recognised"
    return f"not a readable audio file ({detail})"


def _head_bytes(name: str, n: int = 1 << 16) -> bytes | None:
    try:
        if storage.is_local(name):
            with open(storage.local_path(name), "rb") as f:
                return f.read(n)
        with storage.open_input_file(name) as f:
            return f.read(n)
    except OSError:
        return None


def _id3_end(data: bytes) -> int:
    """Byte offset where audio would start after an ID3v2 tag at the start of ``data``."""
    if len(data) < 10 or not data.startswith(b"ID3"):
        return 0
    size = 0
    for b in data[6:10]:  # four 7-bit "syncsafe" bytes
        size = (size << 7) | (b & 0x7F)
    footer = 10 if data[5] & 0x10 else 0
    return 10 + size + footer


def _has_mpeg_sync(data: bytes) -> bool:
    """True if ``data`` contains an MPEG audio frame sync (11 set bits)."""
    pos = data.find(b"\xff")
    while pos != -1 and pos + 1 < len(data):
        if data[pos + 1] & 0xE0 == 0xE0:
            return True
        pos = data.find(b"\xff", pos + 1)
    return False


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
