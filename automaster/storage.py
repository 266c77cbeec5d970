"""Paths and URIs through ``pyarrow.fs``: local folders, ``file://``, ``s3://``, ``gs://``.

A thin layer so that jobs on a multi-node cluster can read and write shared storage with the same
code as on a laptop. Plain paths (no scheme) are local. Local writes are atomic: data goes to a
hidden temporary file in the destination folder, is fsynced, then renamed over the destination
(``os.replace``), so readers never see half a file and a re-run never mistakes a partial output for
a finished one. An object-store put only becomes visible when complete, so it is already atomic.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import pathlib
import stat
import tempfile
from collections.abc import Iterator
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

_LOCAL = pafs.LocalFileSystem()
# Temporary files are ".automaster-tmp-<name>.<random>.tmp" next to their destination: a name
# reserved for this program, so that a start-up sweep never takes a user's own ".draft.tmp".
TMP_PREFIX = ".automaster-tmp-"
TMP_SUFFIX = ".tmp"
_TMP_STEM_BYTES = 200  # of <name> in a temporary file's name (most file systems allow 255 bytes)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _scheme(uri: str) -> str:
    """URI scheme in lower case, ``""`` for a plain path (a Windows drive letter is not a scheme)."""
    head, sep, _ = str(uri).partition("://")
    if not sep or len(head) < 2 or not head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return ""
    return head.lower()


def is_local(uri: str | os.PathLike) -> bool:
    """True for a plain path or a ``file://`` URI."""
    return _scheme(os.fspath(uri)) in ("", "file")


def local_path(uri: str | os.PathLike) -> str:
    """The absolute local path of a plain path or ``file://`` URI.

    Raises:
        ValueError: ``uri`` is on a remote file system.
    """
    uri = os.fspath(uri)
    scheme = _scheme(uri)
    if scheme == "file":
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI with a host is not a local path: {uri!r}")
        return os.path.abspath(unquote(parsed.path))
    if scheme:
        raise ValueError(f"not a local path: {uri!r}")
    return os.path.abspath(os.path.expanduser(uri))


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or any URI ``pyarrow.fs`` understands."""
    uri = os.fspath(uri)
    if is_local(uri):
        return _LOCAL, local_path(uri)
    return pafs.FileSystem.from_uri(uri)


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path components; URIs keep their scheme and use ``/``."""
    base = os.fspath(base)
    if not _scheme(base):
        return os.path.join(base, *parts)
    out = base
    for part in parts:
        out = out.rstrip("/") + "/" + str(part).lstrip("/")
    return out


# Local paths go through ``os`` rather than pyarrow: a file name that is not UTF-8 arrives as a
# surrogate-escaped ``str`` (PEP 383), which ``os`` round-trips and pyarrow refuses to encode.


def exists(uri: str | os.PathLike) -> bool:
    """True if a file or folder exists at ``uri``."""
    if is_local(uri):
        return os.path.lexists(local_path(uri))
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str | os.PathLike) -> bool:
    """True if ``uri`` is a folder (on object stores: a prefix with objects under it)."""
    if is_local(uri):
        return os.path.isdir(local_path(uri))
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def is_file(uri: str | os.PathLike) -> bool:
    """True if ``uri`` is a file (locally: a regular file, not a FIFO, device or socket)."""
    if is_local(uri):
        return os.path.isfile(local_path(uri))
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def makedirs(uri: str | os.PathLike) -> None:
    """Create the folder ``uri`` and its parents; nothing happens if it exists."""
    if is_local(uri):
        os.makedirs(local_path(uri), exist_ok=True)
        return
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def remove_file(uri: str | os.PathLike) -> None:
    """Delete the file at ``uri``; nothing happens if it is not there."""
    if is_local(uri):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local_path(uri))
        return
    fs, path = resolve(uri)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_file(path)


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The whole content of the file at ``uri``."""
    if is_local(uri):
        with open(local_path(uri), "rb") as f:
            return f.read()
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def not_regular_reason(uri: str | os.PathLike) -> str | None:
    """Why the local ``uri`` must not be opened for reading, or None for a regular file.

    Opening a FIFO blocks until a writer appears, a device may never end: a batch job reads
    regular files only. Remote URIs are objects, always fine.
    """
    if not is_local(uri):
        return None
    try:
        mode = os.stat(local_path(uri)).st_mode
    except OSError as exc:
        return f"cannot stat ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else (
        "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file")
    return f"{kind}, not a regular file: not read"


def file_mode() -> int:
    """The mode a new file gets from the umask (``0o666 & ~umask``), as ``open()`` would give."""
    return 0o666 & ~_UMASK


def display(name: str) -> str:
    """``name`` printable anywhere: bytes that are not UTF-8 (surrogate-escaped) shown as U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def display_name(name: str) -> str:
    """A file name for one line of a console table: :func:`display`, and characters that would
    break the line or drive the terminal (newline, tab, ESC, bidi overrides) written as escapes
    (``new\\nline.wav``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in display(name))


def plural(n: int, word: str) -> str:
    """``1 file``, ``2 files``: a count for a console line."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def open_input_file(uri: str | os.PathLike) -> pafs.NativeFile:
    """A seekable, readable binary file object for ``uri`` (close it, or use ``with``)."""
    fs, path = resolve(uri)
    return fs.open_input_file(path)


@contextlib.contextmanager
def atomic_local_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it to ``path``.

    The temporary name is hidden and reserved (``.automaster-tmp-name.XXXX.tmp``) so that folder
    listings skip it and :func:`remove_stale_temporaries` removes only ours. If the
    body raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = local_path(path)
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    # A name's first bytes only: a name near the 255-byte limit has no room for the hidden prefix and suffix.
    stem = name.encode("utf-8", "surrogateescape")[:_TMP_STEM_BYTES].decode("utf-8", "surrogateescape")
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{stem}.", suffix=TMP_SUFFIX, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # mkstemp makes 0600: give the file the mode any tool would
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def write_bytes_atomic(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``uri`` so that readers see either the old file or the whole new one."""
    uri = os.fspath(uri)
    if is_local(uri):
        with atomic_local_path(uri) as tmp, open(tmp, "wb") as f:
            f.write(data)
        return
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def list_files(uri: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Sorted paths of the files under the folder ``uri``, in the same form as ``uri``.

    A plain path gives absolute local paths; a URI gives URIs with the same scheme and host.
    Hidden files are included (callers filter). Local listings do not descend into symlinked
    folders (no cycles) and skip unreadable sub-folders (:func:`scan_files` says which).

    Raises:
        FileNotFoundError: ``uri`` is not a folder.
    """
    return scan_files(uri, recursive)[0]


def scan_files(uri: str | os.PathLike, recursive: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """``(files, passed_over)`` under the folder ``uri``: the sorted file paths as
    :func:`list_files` gives them, and ``(path, reason)`` for each folder not entered (a symbolic
    link to a folder, an unreadable folder).

    Raises:
        FileNotFoundError: ``uri`` is not a folder.
    """
    uri = os.fspath(uri)
    if is_local(uri):
        root = local_path(uri)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"not a folder: {uri!r}")
        found: list[str] = []
        passed: list[tuple[str, str]] = []

        def unreadable(err: OSError) -> None:
            logger.warning("skipping unreadable folder while listing: %s", err)
            passed.append((err.filename or "", f"unreadable folder ({err.strerror or err})"))

        for folder, dirs, files in os.walk(root, onerror=unreadable):
            found.extend(os.path.join(folder, name) for name in files)
            passed.extend(
                (os.path.join(folder, d), "symbolic link to a folder: not followed")
                for d in dirs if os.path.islink(os.path.join(folder, d))
            )
            if not recursive:
                dirs.clear()
        found.sort()
        passed.sort()
        if _scheme(uri) == "":
            return found, passed
        return [pathlib.Path(p).as_uri() for p in found], [(pathlib.Path(p).as_uri(), r) for p, r in passed]
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"not a folder: {uri!r}")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    base = path.rstrip("/")
    rel = sorted(i.path[len(base):].lstrip("/") for i in infos if i.type == pafs.FileType.File)
    return [join(uri, r) for r in rel], []


def remove_stale_temporaries(uri: str | os.PathLike, recursive: bool = False) -> int:
    """Delete the ``.automaster-tmp-*.tmp`` files that killed writers of this program left in the
    local folder ``uri`` (and its sub-folders when ``recursive``); returns how many. A user's own
    temporaries (``.draft.tmp``) never match. Call only while no writer runs (under the job's lock)."""
    if not is_local(uri) or not os.path.isdir(local_path(uri)):
        return 0
    removed = 0
    for folder, dirs, files in os.walk(local_path(uri)):
        for name in files:
            if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
        if not recursive:
            dirs.clear()
    return removed


def fingerprint(uri: str | os.PathLike) -> dict[str, object]:
    """``{"size", "mtime_ns", "blake2b"}`` of a file: what says whether an input changed.

    The hash reads every byte (BLAKE2b runs at about 350 MB/s: 20 ms for a 7 MB 30 s FLAC, a few
    per cent of mastering it). Remote files report ``mtime_ns`` as pyarrow gives it (or None).
    """
    digest = hashlib.blake2b(digest_size=20)
    if is_local(uri):
        path = local_path(uri)
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "blake2b": digest.hexdigest()}
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    with fs.open_input_stream(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    mtime = info.mtime_ns if info.mtime is not None else None
    return {"size": info.size, "mtime_ns": mtime, "blake2b": digest.hexdigest()}


def same_file(uri: str | os.PathLike, recorded: dict[str, object] | None) -> bool:
    """True when the file at ``uri`` is still the one ``recorded`` (:func:`fingerprint`).

    Same size and modification time: trusted without reading (as make and rsync do); a touched
    file whose bytes are unchanged is still the same; a missing file or record is not."""
    if not recorded or "blake2b" not in recorded:
        return False
    try:
        if is_local(uri):
            st = os.stat(local_path(uri))
            size, mtime = st.st_size, st.st_mtime_ns
        else:
            fs, path = resolve(uri)
            info = fs.get_file_info(path)
            size, mtime = info.size, (info.mtime_ns if info.mtime is not None else None)
        if size != recorded.get("size"):
            return False
        if mtime is not None and mtime == recorded.get("mtime_ns"):
            return True
        return fingerprint(uri)["blake2b"] == recorded["blake2b"]
    except OSError:
        return False


# ------------------------------------------------------------------------------- full disks

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
FULL_FREE_BYTES = 4 << 20  # less free than this after a failed write: the disk is full


class DiskFullError(OSError):
    """No space left on the device of a job's output: the job stops (every later item would fail)."""

    def __init__(self, where: str):
        super().__init__(errno.ENOSPC, f"no space left on device: {display(where)}")
        self.where = where

    def __str__(self) -> str:
        return self.strerror or "no space left on device"


def free_bytes(uri: str | os.PathLike) -> int | None:
    """Bytes free to this user on the local file system of ``uri`` (or its nearest existing
    parent); None for remote URIs or where it cannot be told."""
    if not is_local(uri):
        return None
    path = local_path(uri)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_disk_full(exc: BaseException, where: str | os.PathLike | None = None) -> bool:
    """True when ``exc`` (or one it was raised from) is ENOSPC/EDQUOT, or when it is another write
    error and ``where`` has next to no space left: libsndfile reports a full disk as "System
    error." without the errno."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        e = e.__cause__ or e.__context__
    if where is None:
        return False
    free = free_bytes(where)
    return free is not None and free < FULL_FREE_BYTES


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    """Persist a rename (POSIX); silently skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
