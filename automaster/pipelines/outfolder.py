"""An output folder that never lies about its contents: manifest, lock, per-item records, staging.

Everything a batch job keeps for itself lives in ``<out>/.automaster/``:

* ``manifest.json``: the job, the code version, the settings that affect outputs, the SHA-256 of
  every file that decides them (the model, a reference) and the input roots (sorted). A re-run
  with the same ones resumes; with others, or from other inputs, it is refused (unless
  overwriting).
* ``lock``: held (``flock``) while a run writes; a second run into the same folder is refused.
  The kernel drops the lock when its process dies, so a killed run never leaves a stale lock.
* ``items/<hash>.json``: one record per finished item, written *after* all of its outputs are
  published, with its input's fingerprint (size, mtime, BLAKE2b). Resume trusts only items with
  a record whose outputs all exist and whose input is unchanged; a changed input is redone.
* ``staging/``: where an item's outputs are written before they are published (renamed into
  place); whatever a killed run left there is swept away at the next start, with the reserved
  ``.automaster-tmp-*`` temporaries of the files the job writes itself (never a user's file).

Remote outputs (``s3://``, ``gs://``) get the manifest and records but no lock (object stores
have no such thing): one run at a time is then the user's responsibility.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import posixpath
import shutil
import socket
import stat
import tempfile
import time
import uuid
from importlib import metadata
from typing import Any

from automaster import storage
from automaster.config import ConfigError
from automaster.pipelines.tracking import flatten

log = logging.getLogger(__name__)

STATE_DIR = ".automaster"
MANIFEST = "manifest.json"
LOCK = "lock"
ITEMS_DIR = "items"
STAGING_DIR = "staging"


class OutputFolderError(ConfigError):
    """The output folder cannot take this run (other settings, another run, not a folder).

    A ConfigError: the command line reports it in one line with exit code 2, before any work.
    """


def code_version() -> str:
    """The installed automaster version (``0+unknown`` in a plain checkout)."""
    try:
        return metadata.version("automaster")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def file_sha256(path: str) -> str:
    """SHA-256 of a file (local path or URI), hex."""
    digest = hashlib.sha256()
    if storage.is_local(path):
        with open(storage.local_path(path), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(storage.read_bytes(path))
    return digest.hexdigest()


def make_manifest(
    job: str, settings: dict[str, Any], model_sha256: str | None = None, inputs: list[str] | None = None,
    files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What an output folder records about the outputs in it: ``inputs`` (the input roots, kept
    sorted) and ``files`` (``{name: SHA-256}`` of the files that decide the outputs)."""
    manifest = {
        "job": job, "version": code_version(), "model_sha256": model_sha256,
        "settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
    }
    if inputs is not None:
        manifest["inputs"] = sorted(inputs)
    if files:
        manifest["files_sha256"] = dict(sorted(files.items()))
    return manifest


# Settings that are paths to weights whose hash is recorded beside them: the hash decides. (The
# shipped level model's path is inside the checkout, which `ray job submit` copies to a new
# temporary folder for every job: by path, no submitted run could ever resume.)
_HASHED_PATHS = {"level_model": "level_model_sha256"}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``name: old -> new`` for each field of the manifests that decides the outputs."""
    diffs = []
    for key in ("job", "model_sha256"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: {old.get(key)} -> {new.get(key)}")
    a_files, b_files = old.get("files_sha256") or {}, new.get("files_sha256") or {}
    for name in sorted(set(a_files) | set(b_files)):
        if a_files.get(name) != b_files.get(name):
            diffs.append(f"{name} SHA-256: {a_files.get(name, '(none)')} -> {b_files.get(name, '(none)')}")
    a, b = flatten(old.get("settings", {})), flatten(new.get("settings", {}))
    for key in sorted(set(a) | set(b)):
        hashed = _HASHED_PATHS.get(key)
        if (hashed and a.get(hashed) and b.get(hashed)) or (key in a_files and key in b_files):
            continue  # compared by the hash (a reference's is in files_sha256)
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key, '(unset)')} -> {b.get(key, '(unset)')}")
    return diffs


def path_problem(path: str) -> str | None:
    """Why the local ``path`` cannot be used as a folder, or None: a symbolic link loop, a file,
    a component that is not a folder. (A path that does not exist yet is fine.)"""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None if not os.path.islink(path) else "a symbolic link to nothing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        return _why(exc)
    return None if stat.S_ISDIR(st.st_mode) else "exists and is not a folder"


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower() if exc.errno != errno.EROFS else "read-only file system"


def _roots(paths: list[str]) -> str:
    return ", ".join(storage.display(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _record_name(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".json"


def json_default(value: Any) -> Any:
    """``json.dumps`` default for numpy scalars and arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class OutputFolder:
    """The output folder ``out`` of one job run (see the module docstring)."""

    def __init__(self, out: str):
        self.out = out
        self.state = storage.join(out, STATE_DIR)
        self._lock_fd: int | None = None

    # ---------------------------------------------------------------- checks before any work

    def check_usable(self, flag: str = "--out") -> None:
        """Refuse, in one line, an ``out`` that is a file, a symbolic link loop, or a local folder
        that cannot be created or written into (read-only, no permission); creates it."""
        if not storage.is_local(self.out):
            if storage.exists(self.out) and not storage.is_dir(self.out):
                raise OutputFolderError(f"{flag} {self.out}: exists and is not a folder")
            return
        path = storage.local_path(self.out)
        problem = path_problem(path)
        if problem:
            raise OutputFolderError(f"{flag} {storage.display(self.out)}: {problem}")
        try:
            os.makedirs(path, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=storage.TMP_PREFIX + "probe.", suffix=storage.TMP_SUFFIX, dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            what = "cannot be created" if not os.path.isdir(path) else "cannot be written into"
            raise OutputFolderError(f"{flag} {storage.display(self.out)}: {what} ({_why(exc)})") from None

    def acquire_lock(self, job: str) -> None:
        """Hold the folder's lock for this process, or raise naming the run that holds it."""
        if not storage.is_local(self.out):
            log.warning("%s is remote: no lock; run one job at a time into it", self.out)
            return
        import fcntl

        storage.makedirs(self.state)
        path = storage.local_path(storage.join(self.state, LOCK))
        fd = os.open(path, os.O_RDWR | os.O_CREAT, storage.file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputFolderError(
                f"--out {self.out}: another run is writing into this folder ({holder}); wait for it to "
                "finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{job} pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def check_foreign(self, outputs: tuple[str, ...]) -> None:
        """Refuse a folder without a manifest (not made by automaster) that already holds one of
        the job's ``outputs``: publishing would replace the user's files of the same names."""
        if storage.exists(storage.join(self.state, MANIFEST)):
            return
        found = [name for name in outputs if storage.exists(storage.join(self.out, name))]
        if found:
            raise OutputFolderError(
                f"--out {storage.display(self.out)} holds {', '.join(found)}, which automaster did not write; "
                "choose a new or empty folder, or --overwrite to replace them"
            )

    def check_manifest(self, manifest: dict[str, Any], overwrite: bool) -> str:
        """Compare with the folder's manifest; returns ``new``, ``same`` or ``overwritten``.

        Raises:
            OutputFolderError: the folder holds outputs of other settings and not ``overwrite``.
        """
        path = storage.join(self.state, MANIFEST)
        old = json.loads(storage.read_bytes(path)) if storage.exists(path) else None
        if old is not None and old.get("version") != manifest["version"]:
            log.warning("%s was made by automaster %s, this is %s", self.out, old.get("version"), manifest["version"])
        diffs = [] if old is None else _differences(old, manifest)
        old_inputs, new_inputs = (old or {}).get("inputs"), manifest.get("inputs")
        if old_inputs is not None and new_inputs is not None and old_inputs != new_inputs and not overwrite:
            raise OutputFolderError(
                f"--out {self.out} holds the outputs of other inputs ({_roots(old_inputs)}; now {_roots(new_inputs)}); "
                "use another --out, the same --input to resume, or --overwrite to replace them"
            )
        if old_inputs != new_inputs and old_inputs is not None:
            diffs.append("inputs")
        if diffs and not overwrite:
            raise OutputFolderError(
                f"--out {self.out} holds outputs made with other settings ({'; '.join(diffs)}); "
                "use another --out, the same settings to resume, or --overwrite to redo every item"
            )
        if diffs or overwrite:
            self.clear_records()
        storage.write_bytes_atomic(path, json.dumps(manifest, indent=2, sort_keys=True).encode())
        return "new" if old is None else "overwritten" if (diffs or overwrite) else "same"

    # ---------------------------------------------------------------- records and staging

    def sweep(self, written: tuple[str, ...] = ()) -> int:
        """Remove what killed runs left, where this job writes: the staging folder, and the reserved
        ``.automaster-tmp-*`` temporaries in ``out`` itself, in the state folder and in the folders
        of ``written`` (relative paths of files the job writes there); returns how many files.
        A user's own files, whatever their names, are never touched (``--out`` may be ``--input``)."""
        removed = storage.remove_stale_temporaries(self.out)
        removed += storage.remove_stale_temporaries(self.state, recursive=True)
        for folder in sorted({posixpath.dirname(rel) for rel in written} - {""}):
            removed += storage.remove_stale_temporaries(storage.join(self.out, *folder.split("/")))
        return removed + self.clear_staging()

    def clear_staging(self) -> int:
        """Remove the staging folder (no item may be running); returns how many files it held."""
        staging = storage.join(self.state, STAGING_DIR)
        if not (storage.is_local(staging) and os.path.isdir(storage.local_path(staging))):
            return 0
        removed = sum(len(files) for _, _, files in os.walk(storage.local_path(staging)))
        shutil.rmtree(storage.local_path(staging), ignore_errors=True)
        return removed

    def clear_records(self) -> None:
        items = storage.join(self.state, ITEMS_DIR)
        if storage.is_local(items):
            shutil.rmtree(storage.local_path(items), ignore_errors=True)
        else:
            fs, path = storage.resolve(items)
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.delete_dir(path)

    def records(self) -> dict[str, dict[str, Any]]:
        """The records of complete items by key: every output they list exists."""
        folder = storage.join(self.state, ITEMS_DIR)
        if not storage.is_dir(folder):
            return {}
        out: dict[str, dict[str, Any]] = {}
        for path in storage.list_files(folder, recursive=False):
            if not path.endswith(".json"):
                continue
            try:
                record = json.loads(storage.read_bytes(path))
            except (OSError, ValueError) as exc:
                log.warning("unreadable item record %s (%s): its item will be redone", path, exc)
                continue
            if all(storage.exists(storage.join(self.out, rel)) for rel in record.get("outputs", [])):
                out[record["key"]] = record
        return out

    def forget(self, record: dict[str, Any]) -> None:
        """Un-complete an item: its record first (never trusted again), then the outputs it lists."""
        storage.remove_file(storage.join(self.state, ITEMS_DIR, _record_name(record["key"])))
        self.unpublish(record.get("outputs", []))

    def unpublish(self, outputs: list[str]) -> None:
        """Remove published outputs (relative paths) of an item that is not complete after all."""
        for rel in outputs:
            storage.remove_file(storage.join(self.out, *rel.split("/")))

    def write_record(self, record: dict[str, Any]) -> None:
        """Mark an item complete (after its outputs are published)."""
        path = storage.join(self.state, ITEMS_DIR, _record_name(record["key"]))
        storage.write_bytes_atomic(path, json.dumps(record, default=json_default, sort_keys=True).encode())

    def staging(self) -> Staging:
        return Staging(self.out, storage.join(self.state, STAGING_DIR, uuid.uuid4().hex))


class Staging:
    """Where one item's outputs are written before they are published together.

    ``path(rel)`` gives a local path to write the output ``rel`` (relative to the output folder)
    to; :meth:`publish` moves them all into place. Local outputs are renamed (same file system);
    remote ones are uploaded from a local temporary folder.
    """

    def __init__(self, out: str, folder: str):
        self.out = out
        self.local = storage.is_local(out)
        self.folder = storage.local_path(folder) if self.local else tempfile.mkdtemp(prefix="automaster-staging-")
        self.staged: dict[str, str] = {}

    def path(self, rel: str) -> str:
        """A local path for the output ``rel`` (``/``-separated, relative to the output folder)."""
        if rel in self.staged:
            raise ValueError(f"output {rel!r} written twice by one item")
        local = os.path.join(self.folder, *rel.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        self.staged[rel] = local
        return local

    def publish(self) -> list[str]:
        """Move every staged output into place; returns their relative paths (sorted)."""
        for rel, local in self.staged.items():
            if not os.path.exists(local):
                raise FileNotFoundError(f"output {rel!r} was announced but not written")
            target = storage.join(self.out, *rel.split("/"))
            if self.local:
                os.makedirs(os.path.dirname(storage.local_path(target)), exist_ok=True)
                os.replace(local, storage.local_path(target))
            else:
                with open(local, "rb") as f:
                    storage.write_bytes_atomic(target, f.read())
        self.discard()
        return sorted(self.staged)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
