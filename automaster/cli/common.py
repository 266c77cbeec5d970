"""What every ``automaster`` command shares: exit codes, the usage error, logging, the common
flags and the checks of paths given on the command line.

Exit codes (:data:`EXIT_CODES_HELP`, shown by ``automaster --help``):

* 0: the job ran; items that failed are listed in its summary (``summary.json``). A job whose
  MLflow store could not record it (locked, corrupt, unreachable) still exits 0 when its outputs
  are written, and says so in one line: ``not recorded in MLflow: <why>``.
* 1: the job ran but produced nothing (every item failed), or it stopped: no space left on the
  output's device (finished items are kept; a re-run resumes).
* 2: a mistake in the arguments or an unusable path (read-only or uncreatable ``--out``, a
  symbolic link loop, ``--out`` holding other settings' or other inputs' outputs, a busy
  ``--out``): one line, before any cluster starts and before anything is written.
* 130: interrupted (Ctrl-C); finished outputs are kept and a re-run resumes.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from automaster.storage import plural  # noqa: F401 (the commands import it from here)

log = logging.getLogger("automaster")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES_HELP = """\
exit codes:
  0    the job ran (failed items are listed in its summary; a job MLflow could not record says so in one line)
  1    nothing could be processed, or the job stopped (no space left on device; a re-run resumes)
  2    a mistake in the arguments or an unusable path, before anything starts
  130  interrupted (finished outputs are kept; a re-run resumes)"""
NAME_MAX = 255  # bytes in one file or folder name (ext4, APFS, NTFS, XFS)
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root (bundled music, shipped models)


class UsageError(ValueError):
    """A user's mistake on the command line."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose refusals are one line (argparse prints its whole usage block
    first) that points to ``--help``; exit code 2, as argparse's."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} ('{self.prog} --help' lists the options)\n")


def setup_logging(verbose: bool) -> None:
    """The console shows warnings and errors (everything with ``-v``); a batch job adds its log
    file, which gets everything from INFO up."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    for noisy in ("urllib3", "matplotlib", "numba", "alembic", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_common(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--set`` and the MLflow, Ray and verbosity flags."""
    p.add_argument("--config", help="TOML/YAML/JSON config file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    add_tracking(p)


def add_tracking(p: argparse.ArgumentParser, experiment_help: str = "MLflow experiment name") -> None:
    """``--experiment``, ``--run-name``, ``--tracking-uri``, ``--ray-address`` and ``-v``."""
    p.add_argument("--experiment", help=experiment_help)
    p.add_argument("--run-name", help="MLflow run name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local loopback Ray)")
    p.add_argument("-v", "--verbose", action="store_true")


def job_options(args: argparse.Namespace, experiment: str) -> dict[str, Any]:
    """The keyword arguments a job takes from the common flags (``experiment``: the default
    MLflow experiment)."""
    return {"tracking_uri": args.tracking_uri, "experiment": args.experiment or experiment, "run_name": args.run_name,
            "ray_address": args.ray_address, "verbose": args.verbose}


def add_batch_options(p: argparse.ArgumentParser) -> None:
    """The options every batch job (demaster, master, evaluate) shares."""
    p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=None,
                   help="run on Ray (--ray) or in this process (--no-ray); default: in-process for a handful of "
                   "items (batch.local_max_items, 4) without --ray-address, else Ray")
    p.add_argument("--overwrite", action="store_true",
                   help="redo every item, also when --out holds outputs made with other settings")


def add_workers(p: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--gpu`` of the batch jobs that run one model per actor."""
    p.add_argument("--workers", type=int, default=0, help="parallel actors (0, the default: every CPU, or GPU with --gpu; at most 4 per CPU of this machine, and at least 64 allowed)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")


def announce(job: str, what: str, out: str) -> None:
    """One console line before a job that says nothing until it ends: what it does, where its log is."""
    from automaster.pipelines.batch import job_log_file

    print(f"{job}: {what}; log: {job_log_file(out, job)}", file=sys.stderr, flush=True)


def print_summary(job: str, summary: dict, extra: str = "") -> None:
    """A batch job's end-of-run lines (:func:`automaster.pipelines.batch.format_summary`)."""
    from automaster.pipelines.batch import format_summary

    print(format_summary(job, summary, extra))


def overrides(args: argparse.Namespace, section: str, names: Sequence[str]) -> list[str]:
    """``section.name=value`` config overrides of the flags given (``None``: not given)."""
    out = []
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out.append(f"{section}.{name}={value}")
    return out


def location(value: str, must_exist: bool = False, flag: str = "") -> str:
    """An absolute local path (or a URI unchanged); in a submitted job relative paths are refused."""
    from automaster.pipelines.runtime import in_ray_job

    if not value.strip():  # Path("") is the working directory: never what was meant
        raise UsageError(f"{flag or 'a path'} is empty; give a file or folder")
    if "://" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and in_ray_job() and _cwd_is_ray_working_dir():
        raise UsageError(
            f"{flag + ' ' if flag else ''}{value!r} is a relative path inside a submitted Ray job, whose working directory is a "
            "temporary copy; pass an absolute path or a URI (s3://, gs://)"
        )
    try:
        path = path.resolve()
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError for a loop
        loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP
        raise UsageError(f"{flag + ' ' if flag else ''}{value!r}: "
                         f"{'a symbolic link loop' if loop else (exc.strerror or str(exc)).lower()}") from None
    if must_exist and not path.exists():
        raise UsageError(f"{flag + ' ' if flag else ''}{value!r} does not exist")
    check_name_length(str(path), flag)
    return str(path)


def check_name_length(path: str, flag: str = "", suffix: str = "") -> None:
    """Every name in ``path`` (the last one with ``suffix``, a file written beside it) within the
    255 bytes a file system takes (Path.resolve lets a longer one through; writing it fails late)."""
    parts = Path(path).parts
    for n, part in enumerate(parts):
        name = part + (suffix if n == len(parts) - 1 else "")
        if len(os.fsencode(name)) > NAME_MAX:
            raise UsageError(f"{flag + ' ' if flag else ''}{path!r}: the name {name[:40]}... is "
                             f"{len(os.fsencode(name))} bytes, a file system takes at most {NAME_MAX}")


def check_tracking(uri: str | None) -> None:
    """``--tracking-uri`` (or ``$MLFLOW_TRACKING_URI``) of a job that must record (train, tune):
    a server that does not answer is one line before Ray starts."""
    from automaster.pipelines.tracking import resolve_tracking_uri, unreachable

    resolved = resolve_tracking_uri(uri)
    if reason := unreachable(resolved):
        raise UsageError(f"--tracking-uri {resolved}: {reason}")


def demaster_output(value: str) -> str:
    """``--data``: the location of a ``demaster --out`` folder (its ``dataset_meta.json`` read
    here, so a wrong folder is one line before the announcement, ``--out`` and Ray)."""
    data = location(value, must_exist=True, flag="--data")
    from automaster.training.pairs import read_meta  # torch (automaster.training): once the folder exists

    try:
        read_meta(data)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--data {exc}") from None
    return data


def out_location(value: str, flag: str = "--out") -> str:
    """:func:`location` for an output folder: an existing file there is a usage error."""
    where = location(value, flag=flag)
    if "://" not in where and Path(where).exists() and not Path(where).is_dir():
        raise UsageError(f"{flag} {value}: exists and is not a folder")
    return where


def check_workers(workers: int | None) -> None:
    """``--workers``: ``None`` (not given) or between 0 and
    :func:`automaster.pipelines.batch.max_workers` (4 per CPU, at least 64)."""
    from automaster.config import ConfigError
    from automaster.pipelines.batch import check_workers as check

    if workers is not None:
        try:
            check(workers)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None


def _cwd_is_ray_working_dir() -> bool:
    return "runtime_resources" in str(Path.cwd())
