"""Where a batch job's items run: in this process, or on a pool of Ray actors.

Both go through :func:`run_item`, the one per-item boundary of every job: an item's outputs are
staged, published together, then its record is written; any failure is caught and recorded with
the reason. The actor pool keeps each item to a time limit and bounds the attempts of an item
whose worker dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from collections import deque
from typing import Any, Iterator

from automaster import storage
from automaster.audio import AudioError, FileError, repairs
from automaster.config import BatchConfig
from automaster.pipelines.outfolder import OutputFolder

log = logging.getLogger(__name__)


class ItemTimeout(Exception):
    """An item ran past its time limit."""


def time_limit_s(item: dict[str, Any], cfg: BatchConfig) -> float:
    """An item's time limit: a base plus a multiple of its audio's duration (when known)."""
    duration = item.get("duration_s") or 0.0
    return cfg.item_timeout_base_s + cfg.item_timeout_per_audio_s * float(duration)


def item_inputs(item: dict[str, Any]) -> list[str]:
    """The files an item reads: its ``path`` and any ``extra_inputs`` (a per-song reference)."""
    return [item["path"], *item.get("extra_inputs", ())]


def run_item(processor: Any, item: dict[str, Any], folder: OutputFolder) -> dict[str, Any]:
    """Process one item: outputs staged, published, then its record written; never raises.

    The one per-item boundary of every job: returns ``status`` ``ok`` or ``error`` with
    ``reason``, the processor's figures, ``outputs``, ``repairs`` (counts), timings and
    ``inputs`` (the fingerprint of every file it read, :func:`automaster.storage.fingerprint`).
    A full disk sets ``disk_full``: the item's partial outputs are removed and the job stops.
    """
    result: dict[str, Any] = {**item, "rel_path": item.get("rel_path", item["key"]), "status": "ok", "reason": "",
                              "t_start": time.time()}
    t0 = time.perf_counter()
    staging = folder.staging()
    with repairs() as repaired:
        try:
            # Taken before the processor reads: an input changed meanwhile mismatches, and is redone.
            result["inputs"] = _fingerprints(item)
            figures = processor.process(item, staging) or {}
            result.update(figures)
            result["outputs"] = staging.publish()
        except (AudioError, FileError, ItemTimeout) as exc:
            result.update(status="error", reason=str(exc))
            _disk_full(result, exc, staging.folder, folder.out)
        except Exception as exc:  # the per-item boundary of a batch job: record, never abort the batch
            if not _disk_full(result, exc, staging.folder, folder.out):
                # The traceback to the log file only: the summary's "failed:" line names the file and the error.
                log.info("%s failed unexpectedly:\n%s", storage.display(item["path"]), traceback.format_exc())
                result.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        finally:
            staging.discard()
    result["repairs"] = dict(repaired)
    result["seconds"] = time.perf_counter() - t0
    result["t_end"] = time.time()
    if result["status"] == "ok":
        try:
            folder.write_record(result)
        except OSError as exc:  # published but not recorded: removed, so that the item is complete or absent
            folder.unpublish(result.get("outputs", []))
            if not _disk_full(result, exc, folder.state, folder.out):
                result.update(status="error", reason=f"its record could not be written: {exc}")
    return result


def _fingerprints(item: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for path in item_inputs(item):
        try:
            out[path] = storage.fingerprint(path)
        except OSError:  # unreadable: the processor says why when it opens it
            pass
    return out


def _disk_full(result: dict[str, Any], exc: BaseException, where: str, out: str) -> bool:
    """Mark ``result`` failed for a full disk when ``exc`` is one (checked at ``where``)."""
    if not storage.is_disk_full(exc, where):
        return False
    result.update(status="error", reason=f"no space left on device: {storage.display(out)}", disk_full=True)
    return True


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`ItemTimeout` in the main thread after ``seconds`` (in-process runs).

    Python code and most decoders are interrupted; a call blocked inside C is not (the Ray
    workers' limit, enforced by the driver, stops those too)."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise ItemTimeout(f"exceeded its time limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class LocalRunner:
    """Runs the items in this process, through the same :func:`run_item` as the workers."""

    def __init__(self, processor: type, kwargs: dict[str, Any], folder: OutputFolder, cfg: BatchConfig):
        self.processor = processor(**kwargs)
        self.folder, self.cfg = folder, cfg

    def run(self, items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from threadpoolctl import threadpool_limits

        # One BLAS thread, as each Ray worker has (Ray sets OMP_NUM_THREADS=1): a dot product
        # summed by two threads differs in its last bits, and outputs must not depend on the mode.
        with threadpool_limits(limits=1):
            for item in items:
                try:
                    with _alarm(time_limit_s(item, self.cfg)):
                        result = run_item(self.processor, item, self.folder)
                except ItemTimeout as exc:  # raised outside run_item's own boundary (while publishing)
                    result = _failure(item, str(exc))
                yield result  # outside the alarm: the caller's time is not the item's


def _failure(item: dict[str, Any], reason: str, **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {
        **item, "rel_path": item.get("rel_path", item["key"]),
        "status": "error", "reason": reason, "t_start": now, "t_end": now, "seconds": 0.0, "repairs": {}, **extra,
    }


# ------------------------------------------------------------------------------- Ray workers


class _Worker:
    """A Ray actor: builds the processor once, then runs items (see :class:`RayRunner`)."""

    def __init__(self, processor: type, kwargs: dict[str, Any], out: str, log_file: str | None, verbose: bool):
        from threadpoolctl import threadpool_limits

        route_logs(log_file, verbose, console=False)
        threadpool_limits(limits=1)  # one BLAS thread whatever the worker's environment (see LocalRunner)
        self.processor = processor(**kwargs)
        self.folder = OutputFolder(out)

    def ready(self) -> int:
        return os.getpid()

    def run(self, item: dict[str, Any]) -> dict[str, Any]:
        return run_item(self.processor, item, self.folder)


class RayRunner:
    """An actor pool with a time limit per item and bounded attempts when a worker dies.

    Ray Data's pools retry a task whose worker dies without end and have no per-item limit: here
    the driver hands one item at a time to each actor, kills an actor whose item overruns, and
    gives an item whose worker died at most ``max_attempts`` tries.
    """

    def __init__(
        self, processor: type, kwargs: dict[str, Any], device: str, folder: OutputFolder, cfg: BatchConfig, workers: int,
        log_file: str | None, verbose: bool,
    ):
        import ray

        resources = {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}
        self.actor_class = ray.remote(max_restarts=0, max_task_retries=0, **resources)(_Worker)
        self.args = (processor, kwargs, folder.out, log_file, verbose)
        self.cfg, self.workers = cfg, workers

    def _start(self) -> Any:
        return self.actor_class.remote(*self.args)

    def run(self, items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        import ray

        pending = deque((item, 1) for item in items)
        idle = [self._start() for _ in range(max(1, min(self.workers, len(items))))]
        inflight: dict[Any, tuple[Any, dict[str, Any], int, float]] = {}
        try:
            ray.get([a.ready.remote() for a in idle])  # a processor that cannot start fails the job here
            yield from self._loop(pending, idle, inflight)
        finally:  # also when the job stops early (a full disk): no actor outlives its job
            for actor in [*idle, *(a for a, *_ in inflight.values())]:
                ray.kill(actor, no_restart=True)

    def _loop(self, pending: deque, idle: list[Any], inflight: dict[Any, tuple[Any, dict[str, Any], int, float]]) -> Iterator[dict[str, Any]]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        while pending or inflight:
            while idle and pending:
                actor = idle.pop()
                item, attempt = pending.popleft()
                inflight[actor.run.remote(item)] = (actor, item, attempt, time.monotonic())
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                actor, item, attempt, _ = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except (RayActorError, GetTimeoutError) as exc:
                    idle.append(self._start())
                    if attempt < self.cfg.max_attempts:
                        # In the log: the summary says it if the last attempt fails too.
                        log.info("worker died on %s (attempt %d): %s", storage.display(item["path"]), attempt, exc)
                        pending.appendleft((item, attempt + 1))
                    else:
                        yield _failure(item, f"its worker process died {attempt} times while processing it "
                                             "(a crash in a decoder or out of memory); not retried")
                    continue
                idle.append(actor)
                yield result
            now = time.monotonic()
            for ref, (actor, item, attempt, started) in list(inflight.items()):
                limit = time_limit_s(item, self.cfg)
                if now - started > limit:
                    del inflight[ref]
                    ray.kill(actor, no_restart=True)
                    idle.append(self._start())
                    yield _failure(item, f"exceeded its time limit of {limit:.0f} s; its worker was stopped")


# ------------------------------------------------------------------------------- logs


class _ConsoleFilter(logging.Filter):
    """On the console, only automaster's own warnings: the rest goes to the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("automaster") and record.levelno >= logging.WARNING


class _LogFileHandler(logging.FileHandler):
    """The job's log file; a record that cannot be written (a full disk) is dropped, instead of
    logging's "--- Logging error ---" traceback on the console for each one."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def route_logs(log_file: str | None, verbose: bool, console: bool = True) -> None:
    """Every logger to ``log_file``; the console keeps automaster's warnings (all with -v)."""
    if console:
        import mlflow  # noqa: F401  (MLflow adds its console handler on import: import it before routing)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_automaster_job", False)]:
        if log_file is None or old.baseFilename != os.path.abspath(log_file):  # an earlier job's file
            root.removeHandler(old)
            old.close()
    if log_file is not None and not any(getattr(h, "_automaster_job", False) for h in root.handlers):
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        handler = _LogFileHandler(log_file, encoding="utf-8", errors="backslashreplace")
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        handler._automaster_job = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(min(root.level or logging.INFO, logging.INFO))
    if not verbose:
        from automaster.pipelines.runtime import RAY_LOGGERS, loggers_to_root

        loggers_to_root(("mlflow", "alembic", *RAY_LOGGERS))
        # Python warnings (matplotlib's "Glyph ... missing from font(s)" for a title in a script
        # its font lacks) become log records of "py.warnings": in the log file, off the console.
        logging.captureWarnings(True)
    if console and not verbose:
        for h in root.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                if not any(isinstance(f, _ConsoleFilter) for f in h.filters):
                    h.addFilter(_ConsoleFilter())


@contextlib.contextmanager
def stdout_to_log_file(log_file: str, verbose: bool) -> Iterator[None]:
    """This process's stdout into ``log_file`` (appended) unless ``verbose``: for libraries that
    print their progress whatever the logging setup (Ray Tune's experiment table, trial lines
    and status tables)."""
    if verbose or not storage.is_local(log_file):
        yield
        return
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    with (open(log_file, "a", encoding="utf-8", errors="backslashreplace", buffering=1) as file,  # line by line
          contextlib.redirect_stdout(file)):
        yield


@contextlib.contextmanager
def log_file_named_on_failure(log_file: str, what: str) -> Iterator[None]:
    """An exception raised inside names ``log_file`` in a note (``training logs: ...``): the
    reason is in the exception, the workers' output in the file."""
    try:
        yield
    except Exception as exc:
        exc.add_note(f"{what} logs: {log_file}")
        raise
