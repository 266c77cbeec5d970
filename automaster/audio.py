"""Reading and writing audio: any format libsndfile knows, any rate, bit depth and channel count.

Real corpora are full of broken files (FMA has mp3s that are only an ID3 tag, clips of half a
second, files at 48 kHz, decodes with peaks above 0 dBFS). The rules here:

* every unreadable input raises :class:`AudioError`, which names the file and says why in words;
* a file that decodes is returned as it is: float32 ``(C, T)``, never clipped, at its own rate
  unless a rate is asked for (then resampled with soxr). Short or silent clips read fine: whether
  to use them is the calling job's policy;
* a few NaN/Inf samples are replaced by 0; more than :data:`MAX_NONFINITE_FRACTION` is an error;
* writes are atomic (temporary name, then rename) and refuse NaN and integer clipping.

Paths may be local paths or ``pyarrow.fs`` URIs (see :mod:`automaster.storage`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import io
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import soxr

from automaster import storage

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"})

# More non-finite samples than this (a fraction of all samples read) means the file is garbage.
MAX_NONFINITE_FRACTION = 0.01

# Frames decoded per block: memory follows the data actually present, not a (possibly corrupt)
# header's frame count.
_READ_BLOCK = 1 << 18
_WRITE_BLOCK = 1 << 16
# Input context read on each side of an offset/duration window so that resampling has no edges.
_RESAMPLE_CONTEXT_S = 0.05
_MAX_CHANNELS = 64
_REPAIRS: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("automaster_repairs", default=None)

_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".mp3": "MP3"}
_PCM_SUBTYPES = ("PCM_16", "PCM_24")
_WRITE_SUBTYPES = {"WAV": ("PCM_16", "PCM_24", "FLOAT"), "FLAC": _PCM_SUBTYPES}
# Lossy formats: the subtype argument is ignored. Vorbis stores floats (peaks above 1 survive a
# round trip); LAME input above full scale is not something to rely on, so MP3 is treated as PCM.
_LOSSY_SUBTYPES = {"OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}
_FLOAT_STORAGE = {("WAV", "FLOAT"), ("OGG", "VORBIS")}


class AudioError(Exception):
    """An input that cannot be read as audio. ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path!r}: {reason}")

    def __reduce__(self):  # picklable across Ray workers despite the two-argument constructor
        return (type(self), (self.path, self.reason))


class FileError(Exception):
    """One input that a job cannot use (too short, silent, ...): recorded with its reason, never
    stops a batch. (:class:`AudioError` is the reader's; this is a job's policy.)"""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, without decoding it."""

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    format: str  # libsndfile major format: "WAV", "FLAC", "OGG", "MP3", ...
    subtype: str  # "PCM_16", "PCM_24", "FLOAT", "VORBIS", "MPEG_LAYER_III", ...


def is_audio_file(path: str | os.PathLike) -> bool:
    """True if the extension is one of :data:`AUDIO_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in AUDIO_EXTENSIONS


# --------------------------------------------------------------------------------------- reading


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


@contextlib.contextmanager
def repairs() -> Iterator[dict[str, int]]:
    """Collect the repairs the reads inside the block make: ``{"nonfinite_zeroed": samples}``.

    A batch job wraps each item in it, so that the summary counts what was changed in its input.
    """
    counts: dict[str, int] = {}
    token = _REPAIRS.set(counts)
    try:
        yield counts
    finally:
        _REPAIRS.reset(token)


def note_repair(kind: str, count: int = 1) -> None:
    """Count ``count`` repairs of ``kind`` in the enclosing :func:`repairs` block (if any)."""
    counts = _REPAIRS.get()
    if counts is not None and count:
        counts[kind] = counts.get(kind, 0) + int(count)


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, channels, frames, duration and format of ``path`` from its header.

    The frame count of compressed files is the decoder's estimate (exact for mp3s with a
    LAME/Xing header).

    Raises:
        AudioError: the file is missing, not audio, corrupt, or holds no frames.
    """
    with _Opened(path) as f:
        info = AudioInfo(
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
            frames=int(f.frames),
            duration_s=f.frames / f.samplerate if f.samplerate else 0.0,
            format=str(f.format),
            subtype=str(f.subtype),
        )
    _check_header(path, info.sample_rate, info.channels, info.frames)
    return info


def read_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int | None = None,
    mono: bool = False,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 ``(C, T)``; only the frames asked for are decoded.

    Args:
        path: local path or URI of a WAV/FLAC/OGG/MP3/AIFF file (any rate, depth, channels).
        sample_rate: resample to this rate (soxr, high quality); ``None`` keeps the file's rate.
        mono: average the channels into one, ``(1, T)``.
        offset_s: start this many seconds into the file (seeks; earlier audio is not decoded).
        duration_s: read at most this many seconds (less if the file ends first).

    Returns:
        ``(audio, rate)``: float32 ``(C, T)`` with values as decoded (not clipped; lossy decodes
        may exceed 1) and the rate of ``audio``.

    Raises:
        AudioError: unreadable file, no frames (at ``offset_s``), or more than
            :data:`MAX_NONFINITE_FRACTION` of the samples NaN/Inf.
        ValueError: bad arguments (negative offset, non-positive duration or rate).
    """
    if sample_rate is not None and (int(sample_rate) != sample_rate or sample_rate <= 0):
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if not np.isfinite(offset_s) or offset_s < 0:
        raise ValueError(f"offset_s must be >= 0, got {offset_s!r}")
    if duration_s is not None and not (np.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be > 0 or None, got {duration_s!r}")

    name = os.fspath(path)
    with _Opened(name) as f:
        native_sr, channels, header_frames = int(f.samplerate), int(f.channels), int(f.frames)
        _check_header(name, native_sr, channels, header_frames)
        start = int(round(offset_s * native_sr))
        count = None if duration_s is None else max(1, int(round(duration_s * native_sr)))
        if start > 0 and start >= header_frames:
            raise AudioError(
                name, f"offset {offset_s:.3f} s is past the end ({header_frames / native_sr:.3f} s)"
            )
        resampling = sample_rate is not None and int(sample_rate) != native_sr
        # Context on both sides of a window, so that the resampler sees real signal at its edges.
        pre = post = 0
        if resampling and (start > 0 or count is not None):
            ctx = int(round(_RESAMPLE_CONTEXT_S * native_sr))
            pre = min(ctx, start)
            post = ctx if count is not None else 0
        if not resampling and not mono:  # the mastering path: straight into (C, T), one copy of the file
            with _decoder_notes(name):
                audio = _decode_channels(f, name, start, count, header_frames - start)
            if audio.shape[1] == 0:
                where = f" at {offset_s:.3f} s" if start > 0 else ""
                raise AudioError(name, f"no audio frames{where} (decoder returned nothing)")
            return _sanitise_channels(name, audio), native_sr
        frames = _read_frames(f, name, start - pre, None if count is None else pre + count + post)

    got = frames.shape[0] - pre  # frames of the window proper (context trimmed below)
    if count is not None:
        got = min(got, count)
    if got <= 0:
        where = f" at {offset_s:.3f} s" if start > 0 else ""
        raise AudioError(name, f"no audio frames{where} (decoder returned nothing)")
    frames = _sanitise(name, frames)  # (T, C)
    if mono and frames.shape[1] > 1:
        # frames.mean(axis=1, dtype=float64), the same sums, at a tenth of the cost (a reduction
        # over a short strided axis is slow in numpy)
        mix = frames[:, 0].astype(np.float64)
        for c in range(1, frames.shape[1]):
            mix += frames[:, c]
        frames = (mix / frames.shape[1]).astype(np.float32)[:, None]

    rate = native_sr
    if resampling:
        rate = int(sample_rate)
        frames = _resample(name, frames, native_sr, rate, pre, got)
    else:
        frames = frames[pre : pre + got]
    return np.ascontiguousarray(frames.T, dtype=np.float32), rate


def _read_frames(f: sf.SoundFile, name: str, start: int, count: int | None) -> np.ndarray:
    """Decode ``count`` frames (all if None) from ``start`` in blocks; ``(T, C)`` float32."""
    with _decoder_notes(name):
        return _decode_frames(f, name, start, count)


def _decode_frames(f: sf.SoundFile, name: str, start: int, count: int | None) -> np.ndarray:
    blocks = []
    remaining = count
    try:
        if start > 0:
            f.seek(start)
        while remaining is None or remaining > 0:
            n = _READ_BLOCK if remaining is None else min(_READ_BLOCK, remaining)
            block = f.read(n, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                break
            blocks.append(block)
            if remaining is not None:
                remaining -= block.shape[0]
            if block.shape[0] < n:
                break
    except (sf.SoundFileError, RuntimeError) as exc:
        raise AudioError(name, f"decoding failed, file corrupt or truncated ({str(exc).strip()})") from exc
    except MemoryError as exc:
        raise AudioError(name, "out of memory while decoding") from exc
    if not blocks:
        return np.zeros((0, f.channels), np.float32)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)


def _decode_channels(f: sf.SoundFile, name: str, start: int, count: int | None, expected: int) -> np.ndarray:
    """Decode ``count`` frames (all if None) from ``start`` into a ``(C, T)`` float32 array sized
    from the header (grown if the decoder gives more, trimmed if less): the file is held once,
    plus one block, instead of as blocks, their concatenation and its transpose."""
    size = max(1, expected if count is None else min(count, max(expected, 1)))
    out = np.empty((f.channels, size), np.float32)
    filled = 0
    remaining = count
    try:
        if start > 0:
            f.seek(start)
        while remaining is None or remaining > 0:
            n = _READ_BLOCK if remaining is None else min(_READ_BLOCK, remaining)
            block = f.read(n, dtype="float32", always_2d=True)
            got = block.shape[0]
            if got == 0:
                break
            if filled + got > out.shape[1]:  # the header undercounted (an MP3's is an estimate)
                grown = np.empty((f.channels, max(filled + got, out.shape[1] + out.shape[1] // 4)), np.float32)
                grown[:, :filled] = out[:, :filled]
                out = grown
            out[:, filled : filled + got] = block.T
            filled += got
            if remaining is not None:
                remaining -= got
            if got < n:
                break
    except (sf.SoundFileError, RuntimeError) as exc:
        raise AudioError(name, f"decoding failed, file corrupt or truncated ({str(exc).strip()})") from exc
    except MemoryError as exc:
        raise AudioError(name, "out of memory while decoding") from exc
    return out if filled == out.shape[1] else np.ascontiguousarray(out[:, :filled])  # a header that overcounted


def _sanitise_channels(name: str, audio: np.ndarray) -> np.ndarray:
    """:func:`_sanitise` for ``(C, T)``, with no temporary when every sample is finite."""
    if audio.size == 0 or (np.isfinite(audio.max()) and np.isfinite(audio.min())):
        return np.ascontiguousarray(audio)
    return np.ascontiguousarray(_sanitise(name, audio.T).T)


def _sanitise(name: str, frames: np.ndarray) -> np.ndarray:
    finite = np.isfinite(frames)
    if finite.all():
        return frames
    bad = frames.size - int(np.count_nonzero(finite))
    fraction = bad / frames.size
    if fraction > MAX_NONFINITE_FRACTION:
        raise AudioError(name, f"{100 * fraction:.3g}% of samples are NaN/Inf")
    logger.warning("%s: replaced %d NaN/Inf samples (%.3g%%) with 0", storage.display(name), bad, 100 * fraction)
    note_repair("nonfinite_zeroed", bad)
    return np.where(finite, frames, np.float32(0.0))


def _resample(name: str, frames: np.ndarray, sr_in: int, sr_out: int, pre: int, got: int) -> np.ndarray:
    """Resample ``(T, C)``; return exactly ``round(got * sr_out / sr_in)`` frames of the window."""
    try:
        out = soxr.resample(frames, sr_in, sr_out, quality="HQ")
    except (RuntimeError, ValueError) as exc:
        raise AudioError(name, f"resampling {sr_in} -> {sr_out} Hz failed ({exc})") from exc
    out = np.asarray(out, dtype=np.float32).reshape(-1, frames.shape[1])
    first = int(round(pre * sr_out / sr_in))
    n_out = max(1, int(round(got * sr_out / sr_in)))
    out = out[first : first + n_out]
    if out.shape[0] < n_out:  # soxr may return a sample or two short of the exact ratio
        out = np.pad(out, ((0, n_out - out.shape[0]), (0, 0)))
    return out


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


# --------------------------------------------------------------------------------------- writing


def read_excerpt(
    path: str | os.PathLike, seconds: float, *, sample_rate: int, mono: bool, min_seconds: float,
    offset_s: float | None = None,
) -> tuple[np.ndarray, float]:
    """An excerpt of at most ``seconds``: centred (intros are rarely representative) or starting at
    ``offset_s``. Returns ``(audio (C, T) float32 at sample_rate, offset_s)``.

    Raises:
        AudioError: the file cannot be read.
        FileError: shorter than ``min_seconds`` (by its header, or once decoded).
    """
    info = audio_info(path)
    if info.duration_s < min_seconds:
        raise FileError(f"{os.fspath(path)!r}: too short: {info.duration_s:.2f} s (minimum {min_seconds:g} s)")
    clip_s = min(seconds, info.duration_s)
    if offset_s is None:
        offset_s = max(0.0, (info.duration_s - clip_s) / 2.0)
    audio, _ = read_audio(path, sample_rate=sample_rate, mono=mono, offset_s=offset_s, duration_s=clip_s)
    if audio.shape[-1] < min_seconds * sample_rate * 0.99:
        raise FileError(f"{os.fspath(path)!r}: too short after decoding: {audio.shape[-1] / sample_rate:.2f} s")
    return np.ascontiguousarray(audio, dtype=np.float32), offset_s


def write_audio(
    path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    subtype: str = "PCM_16",
) -> None:
    """Write ``(C, T)`` or ``(T,)`` audio atomically; the format comes from the extension.

    Args:
        path: local path or URI ending in .wav, .flac, .ogg/.oga or .mp3.
        audio: float samples, nominally in [-1, 1]; ``(C, T)`` or mono ``(T,)``. Or int16
            samples for PCM_16 WAV/FLAC, stored as they are (no conversion, nothing to check).
        sample_rate: in Hz.
        subtype: "PCM_16", "PCM_24" or "FLOAT" (WAV only) for WAV/FLAC; ignored for OGG (Vorbis)
            and MP3.

    Raises:
        ValueError: unknown extension/subtype, bad shape, NaN/Inf, or peaks above 1 for a format
            that would clip them (every one but FLOAT WAV and Vorbis). Nothing is clipped here:
            callers apply headroom first.
    """
    name = os.fspath(path)
    ext = os.path.splitext(name)[1].lower()
    if ext not in _WRITE_FORMATS:
        raise ValueError(f"cannot write {name!r}: extension must be one of {sorted(_WRITE_FORMATS)}")
    fmt = _WRITE_FORMATS[ext]
    if fmt in _LOSSY_SUBTYPES:
        subtype = _LOSSY_SUBTYPES[fmt]
    elif subtype not in _WRITE_SUBTYPES[fmt]:
        raise ValueError(
            f"cannot write {name!r}: subtype for {fmt} must be one of {_WRITE_SUBTYPES[fmt]}, got {subtype!r}"
        )
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")

    if np.asarray(audio).dtype == np.int16:
        if subtype != "PCM_16" or fmt not in ("WAV", "FLAC"):
            raise ValueError(f"cannot write {name!r}: int16 samples are written as PCM_16 WAV/FLAC only, not {fmt} {subtype}")
        channels = _as_channels(name, audio, np.int16)  # (C, T): stored as they are, nothing to check
    else:
        channels = _checked_float_channels(name, audio, fmt, subtype)
    if storage.is_local(name):
        with storage.atomic_local_path(name) as tmp:
            _encode(tmp, channels, int(sample_rate), fmt, subtype)
    else:
        buf = io.BytesIO()
        _encode(buf, channels, int(sample_rate), fmt, subtype)
        storage.write_bytes_atomic(name, buf.getvalue())


def _checked_float_channels(name: str, audio: np.ndarray, fmt: str, subtype: str) -> np.ndarray:
    """``(C, T)`` float samples checked for NaN/Inf and, for formats that clip, peaks above 1,
    without a temporary the size of the audio (min and max propagate NaN)."""
    x = _as_channels(name, audio, np.float32)
    hi, lo = float(np.max(x)), float(np.min(x))
    if not (math.isfinite(hi) and math.isfinite(lo)):
        raise ValueError(f"cannot write {name!r}: audio contains NaN/Inf")
    peak = max(hi, -lo)
    if peak > 1.0 and (fmt, subtype) not in _FLOAT_STORAGE:
        raise ValueError(
            f"cannot write {name!r}: peak {peak:.4f} ({20 * np.log10(peak):+.2f} dBFS) exceeds full "
            f"scale and {fmt} {subtype} would clip it; apply headroom first or write FLOAT WAV"
        )
    return x


def _as_channels(name: str, audio: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """``(C, T)`` (a view where it can be: the encoder transposes a block at a time)."""
    x = np.asarray(audio)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"cannot write {name!r}: expected (C, T) or (T,) audio, got shape {x.shape}")
    if x.shape[0] > _MAX_CHANNELS:
        raise ValueError(
            f"cannot write {name!r}: expected (C, T) audio, got shape {x.shape} "
            f"({x.shape[0]} channels; did you pass (T, C)?)"
        )
    if x.shape[1] == 0:
        raise ValueError(f"cannot write {name!r}: audio has no samples, shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and x.dtype != dtype:
        raise ValueError(f"cannot write {name!r}: expected float samples, got {x.dtype}")
    return x if x.dtype == dtype else x.astype(dtype)


def _encode(target, channels: np.ndarray, sample_rate: int, fmt: str, subtype: str) -> None:
    """Encode ``(C, T)`` to a path or file object in blocks, each transposed to frames as it is
    written (no copy of the whole file; one huge Vorbis write crashed libsndfile)."""
    if isinstance(target, str):
        target = os.fsencode(target)  # a name that is not UTF-8 (surrogate-escaped) written as it is
    with sf.SoundFile(target, "w", sample_rate, channels.shape[0], subtype=subtype, format=fmt) as f:
        for i in range(0, channels.shape[1], _WRITE_BLOCK):
            f.write(np.ascontiguousarray(channels[:, i : i + _WRITE_BLOCK].T))
