"""One file in, one file out: ``automaster master --input song.flac --out mastered.flac``.

The output's format follows its extension (WAV and FLAC at 24 bits, Ogg Vorbis, MP3), with the
input's rate, channels and length; the report goes beside it (``mastered.flac.report.json``, and
the pictures with ``pictures``). No folder, no Ray and no MLflow run: the cost of one file is the
model's load and the file's own work. The outputs are written under a hidden temporary name in
the same folder and renamed into place together, so a stopped run leaves the old file or the new
one, never half of either. The report records the input's size and content hash: re-running the
same command on the same input with the same settings does nothing; anything else that would
replace an existing output needs ``overwrite``. The input itself is never written over. A run
killed midway leaves its hidden staging folder; the next run into that folder removes it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from typing import Any

from automaster import storage
from automaster.audio import AudioError, FileError, repairs
from automaster.config import ConfigError, MasterConfig
from automaster.pipelines.master import MasterProcessor, check_levels, output_names
from automaster.pipelines.master_inputs import FILE_OUTPUT_EXTENSIONS

TEMP_PREFIX = storage.TMP_PREFIX  # the job's own temporaries: swept by name, never a user's file


def _same_job(report_path: str, input_path: str, settings: dict[str, Any]) -> bool:
    """Whether the report beside an existing output says it was made from this input (its
    recorded fingerprint, :func:`automaster.storage.same_file`) with these settings."""
    try:
        old = json.loads(storage.read_bytes(report_path))
    except (OSError, ValueError):
        return False
    same_input = storage.same_file(input_path, old.get("input"))
    return same_input and json.loads(json.dumps(old.get("settings"), default=str)) == json.loads(json.dumps(settings, default=str))


def check_output(input_path: str, out: str) -> None:
    """Refuse an output file the job cannot write: an unknown format, or the input itself.

    Raises:
        ConfigError: with the reason, naming ``--out``.
    """
    ext = os.path.splitext(out)[1].lower()
    if ext not in FILE_OUTPUT_EXTENSIONS:
        raise ConfigError(f"--out {storage.display(out)}: cannot write {ext or 'this'} files; name a "
                          f"{'/'.join(e[1:] for e in FILE_OUTPUT_EXTENSIONS)} file, or a folder")
    if storage.is_local(out) and storage.is_local(input_path):
        if os.path.exists(out) and os.path.samefile(storage.local_path(out), storage.local_path(input_path)):
            raise ConfigError(f"--out {storage.display(out)} is the input itself: automaster never writes over its input")


def _check_writable(folder: str, out: str) -> None:
    """Make ``out``'s folder and prove it takes a file, before any work (one line, exit 2, if not)."""
    if not storage.is_local(folder):
        return
    try:
        storage.makedirs(folder)
        probe = os.path.join(storage.local_path(folder), f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"--out {storage.display(out)}: cannot write there ({exc.strerror or exc})") from None


def _staging_prefix() -> str:
    """The hidden staging folders of one-file runs on this machine: named by host and process, so
    that a later run can tell a killed run's leftovers (its process is gone) from a running one's."""
    return f"{TEMP_PREFIX}one-{socket.gethostname()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_dead_stagings(folder: str) -> int:
    """Remove the staging folders that killed one-file runs on this machine left in the local
    ``folder`` (a long file's scratch audio among them: hundreds of MB); returns how many. A
    running run's folder (its process alive) and anything not named by this program stay."""
    if not storage.is_local(folder) or not os.path.isdir(storage.local_path(folder)):
        return 0
    prefix, removed = _staging_prefix(), 0
    for entry in os.scandir(storage.local_path(folder)):
        pid = entry.name[len(prefix):].split("-", 1)[0] if entry.name.startswith(prefix) else ""
        if pid.isdigit() and entry.is_dir(follow_symlinks=False) and not _alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    return removed


def master_one(
    model: str, input_path: str, out: str, *, config: MasterConfig, pictures: bool = False, overwrite: bool = False,
) -> dict[str, Any]:
    """Master ``input_path`` into the file ``out``; returns the file's record (``status`` ``ok``,
    ``skipped`` or ``error`` with ``reason``, its levels, ``applied``, ``output``, ``report``).

    Raises:
        ConfigError: a bad ``out`` (format, the input itself, exists without ``overwrite``) or
            bad levels.
        MasteringError, CheckpointError: the model or settings cannot work.
    """
    check_output(input_path, out)
    check_levels(config.target_lufs, config.true_peak_dbtp)
    processor = MasterProcessor(model, config, pictures=pictures)
    settings = {k: v for k, v in processor.masterer.settings().items() if k != "model"}
    settings["pictures"] = bool(pictures)
    folder, name = os.path.split(storage.local_path(out)) if storage.is_local(out) else out.rsplit("/", 1)
    names = output_names(name, "file")
    report_path = storage.join(folder, names["report"])
    t0 = time.perf_counter()
    if storage.exists(out):
        if not overwrite and _same_job(report_path, input_path, settings):
            return {"status": "skipped", "reason": "already mastered from this input with these settings",
                    "path": input_path, "output": out, "report": report_path}
        if not overwrite:
            raise ConfigError(f"--out {storage.display(out)} exists (made from another input or with other "
                              "settings); use --overwrite to replace it")
    _check_writable(folder, out)
    sweep_dead_stagings(folder)
    try:
        fp = {"path": storage.display(input_path), **storage.fingerprint(input_path)}
    except OSError as exc:
        return {"status": "error", "reason": f"cannot read it: {exc.strerror or exc}", "path": input_path}
    from automaster.pipelines.outfolder import Staging

    staging = Staging(folder, storage.join(folder, f"{_staging_prefix()}{os.getpid()}-{uuid.uuid4().hex}"))
    item = {"key": name, "path": input_path, "rel_path": os.path.basename(input_path), "out_rel": name,
            "layout": "file", "fingerprint": fp, "settings": settings}
    record: dict[str, Any] = {"status": "ok", "reason": "", "path": input_path}
    with repairs() as repaired:
        try:
            record.update(processor.process(item, staging))
            staging.publish()
        except (AudioError, FileError) as exc:
            record.update(status="error", reason=str(exc))
        except OSError as exc:
            record.update(status="error", reason=f"cannot write {storage.display(out)}: {exc.strerror or exc}")
        finally:
            staging.discard()
    record.update(output=out, report=report_path, repairs=dict(repaired), seconds=time.perf_counter() - t0)
    return record
