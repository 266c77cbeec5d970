"""The one job skeleton of demaster, master and evaluate: items in, outputs and a summary out.

A job hands :func:`run_job` a :class:`JobSpec` (its name, output folder, the settings that decide
its outputs, a processor class and its arguments) and the items it planned. The skeleton:

1. prepares the output folder (:mod:`.outfolder`): lock, manifest check, sweep of stale
   temporaries, the records of items already complete (resume);
2. runs the items left, in-process when they are few and no cluster was named, else on an actor
   pool of Ray workers that each build the processor once; either way through :func:`run_item`;
3. keeps every item to a time limit (relative to its audio's duration) and a bounded number of
   attempts when its worker dies (a poison file becomes a failure with a reason);
4. writes one record per complete item, ``summary.json`` and one MLflow run, with one progress
   bar on the console and every library's logs in ``<out>/logs/<job>.log``.

A processor is any class whose instances have ``process(item, staging) -> dict``: it writes its
outputs to ``staging.path(rel)`` and returns the item's figures (JSON-able; a ``report`` dict or
extra outputs are fine). Raising :class:`automaster.audio.FileError` (or any exception) fails
that item only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from automaster import storage
from automaster.config import BatchConfig, ConfigError
from automaster.pipelines.outfolder import OutputFolder, json_default, make_manifest
from automaster.pipelines.runners import LocalRunner, RayRunner, item_inputs, route_logs, run_item  # noqa: F401  (run_item: API)

log = logging.getLogger(__name__)

LOG_DIR = "logs"
SUMMARY = "summary.json"
STATE_NAMES = (".automaster", LOG_DIR, SUMMARY)  # what every job writes besides its outputs


@dataclass
class JobSpec:
    """What a job tells the skeleton.

    Attributes:
        job: ``demaster``, ``master`` or ``evaluate``: names the MLflow tags, logs and manifest.
        out: output folder (local path or URI).
        settings: everything that decides the outputs; recorded in the manifest.
        processor: the processor class; built once per worker with ``processor_kwargs``.
        paths: ``{flag: path}`` of the job's inputs and outputs, for the cluster visibility check.
        model: a model file whose SHA-256 goes into the manifest.
        device: ``cpu`` or ``cuda`` (one GPU per worker).
        experiment, run_name, tracking_uri, params: the MLflow run.
        files: ``{relative path: bytes}`` written once the folder is checked (a dataset's
            metadata): they describe the outputs, so they follow the settings.
        inputs: the input roots (files and folders) recorded in the manifest; None: the values
            of :data:`INPUT_FLAGS` in ``paths`` (``--input``, ``--input 2``, ``--corpus``...).
        worker_memory_bytes: one worker's peak memory, as the job estimates it: the default
            worker count is cut to what the cluster's memory holds.
        outputs: the names under ``out`` the job writes (folders and files): a folder that
            automaster did not make (no manifest) and that holds one of them, or a summary, is
            refused unless overwriting, so that no file of the user's is replaced unasked.
    """

    job: str
    out: str
    settings: dict[str, Any]
    processor: type
    processor_kwargs: dict[str, Any]
    paths: dict[str, str | None] = field(default_factory=dict)
    model: str | None = None
    device: str = "cpu"
    experiment: str = "automaster"
    run_name: str | None = None
    tracking_uri: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    inputs: list[str] | None = None
    worker_memory_bytes: float | None = None
    outputs: tuple[str, ...] = ()


@dataclass
class RunOptions:
    """How to run: ``workers`` (0: one per CPU/GPU), ``ray`` (None: decide by the item count),
    ``address`` (a cluster to join), ``overwrite``, ``verbose`` (library logs on the console),
    ``progress`` (the bar)."""

    workers: int = 0
    ray: bool | None = None
    address: str | None = None
    overwrite: bool = False
    verbose: bool = False
    progress: bool = True
    batch: BatchConfig = field(default_factory=BatchConfig)


def log_file_for(spec: JobSpec) -> str:
    """The log file of ``spec``'s job (:func:`job_log_file`)."""
    return job_log_file(spec.out, spec.job)


def job_log_file(out: str, job: str) -> str:
    """``<out>/logs/<job>.log`` for a local output folder, else ``./automaster-logs/<job>.log``."""
    if storage.is_local(out):
        return os.path.join(storage.local_path(out), LOG_DIR, f"{job}.log")
    return os.path.abspath(os.path.join("automaster-logs", f"{job}.log"))


# ------------------------------------------------------------------------------- the job


def excluded_outputs(input_dir: str, out: str, output_names: tuple[str, ...]) -> tuple[str, ...]:
    """What an input scan must leave out so that a job never takes its own outputs as inputs:
    ``out`` when it lies inside ``input_dir``; when they are the same folder, the job's output
    folders and files (``output_names``) and its bookkeeping."""
    if not (storage.is_local(out) and storage.is_local(input_dir)):
        return ()
    o, i = os.path.realpath(storage.local_path(out)), os.path.realpath(storage.local_path(input_dir))
    if o == i:
        base = storage.local_path(input_dir)
        return tuple(os.path.join(base, name) for name in (*output_names, *STATE_NAMES))
    if o.startswith(i + os.sep):
        return (os.path.join(storage.local_path(input_dir), os.path.relpath(o, i)),)
    return ()


def use_ray(n_items: int, options: RunOptions) -> bool:
    """Ray when forced, when a cluster is named, or when there are more than a handful of items."""
    from automaster.pipelines.runtime import in_ray_job

    if options.ray is not None:
        return options.ray
    if options.address or in_ray_job():
        return True
    return n_items > options.batch.local_max_items


MAX_WORKERS_PER_CPU = 4  # --workers above this many per CPU of the machine is a typo, not a plan


def check_workers(workers: int) -> None:
    """``workers`` between 0 (one per CPU/GPU) and :func:`max_workers`."""
    if workers < 0:
        raise ConfigError(f"--workers {workers}: must be >= 0 (0: one per CPU, or per GPU with --gpu)")
    if workers > max_workers():
        raise ConfigError(f"--workers {workers}: at most {max_workers()} ({MAX_WORKERS_PER_CPU} per CPU of this machine; "
                          "0: one per CPU)")


def max_workers() -> int:
    """The largest ``--workers``: :data:`MAX_WORKERS_PER_CPU` per CPU, at least 64 (a cluster's
    driver may run on a small head node)."""
    return max(64, MAX_WORKERS_PER_CPU * (os.cpu_count() or 1))


# Flags whose values are the roots of a job's inputs (one path or a list; ``--input 2`` counts
# as ``--input``), and those that name a file whose content decides every output (hashed into
# the manifest).
INPUT_FLAGS = ("--input", "--corpus", "--clean", "--degraded")
DECISIVE_FLAGS = ("--reference",)


def _flag_paths(spec: JobSpec) -> list[tuple[str, str]]:
    """``(flag, path)`` of every input root named in ``spec.paths``."""
    out = []
    for flag, value in spec.paths.items():
        if flag.split(" ")[0] in INPUT_FLAGS:
            out += [(flag, v) for v in ([value] if isinstance(value, str) else list(value or [])) if v]
    return out


def input_roots(spec: JobSpec) -> list[str]:
    """The job's input roots (``spec.inputs``, else from its flags), absolute and sorted (local
    ones by their real path: the same folder by another name is the same input)."""
    given = spec.inputs if spec.inputs is not None else [v for _, v in _flag_paths(spec)]
    return sorted({os.path.realpath(storage.local_path(v)) if storage.is_local(v) else v for v in given})


def decisive_files(spec: JobSpec) -> dict[str, str]:
    """``{name: SHA-256}`` of the files named by :data:`DECISIVE_FLAGS` (``reference``)."""
    from automaster.pipelines.outfolder import file_sha256

    out = {}
    for flag in DECISIVE_FLAGS:
        value = spec.paths.get(flag)
        if isinstance(value, str) and value and storage.is_file(value):
            out[flag.lstrip("-")] = file_sha256(value)
    return out


def prepare(spec: JobSpec, options: RunOptions) -> tuple[OutputFolder, dict[str, dict[str, Any]], int]:
    """Check, lock and sweep the output folder; returns it, the complete items' records and the
    number of stale files removed. Raises ConfigError (exit 2) before anything starts."""
    from automaster.pipelines.outfolder import path_problem

    check_workers(options.workers)
    for flag, value in _flag_paths(spec):
        problem = path_problem(storage.local_path(value)) if storage.is_local(value) else None
        if problem and problem != "exists and is not a folder":  # a file is a fine input
            raise ConfigError(f"{flag.split(' ')[0]} {storage.display(value)}: {problem}")
    folder = OutputFolder(spec.out)
    folder.check_usable()
    folder.acquire_lock(spec.job)
    try:
        swept = folder.sweep(written=(SUMMARY, *spec.files))
        from automaster.pipelines.outfolder import file_sha256

        model_hash = None if spec.model is None else file_sha256(spec.model)
        settings = dict(spec.settings)
        if settings.get("level_model"):  # the level model's weights change the outputs too
            from automaster.model.level_trees import level_model_file

            settings["level_model_sha256"] = file_sha256(str(level_model_file(settings["level_model"])))
        manifest = make_manifest(spec.job, settings, model_hash, input_roots(spec), decisive_files(spec))
        if not options.overwrite:
            folder.check_foreign((*spec.outputs, SUMMARY))
        folder.check_manifest(manifest, options.overwrite)
        records = {} if options.overwrite else folder.records()
    except BaseException:
        folder.release_lock()
        raise
    return folder, records, swept


def split_done(
    folder: OutputFolder, items: list[dict[str, Any]], records: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(todo, done records, redone items)``: an item whose record's input fingerprints no longer
    match its input (edited in place, another file of the same name) is redone, and its old
    record and outputs are removed first, so that no output is left that its input disowns."""
    todo, done, redone = [], [], []
    for item in items:
        record = records.get(item["key"])
        if record is None:
            todo.append(item)
        elif all(storage.same_file(p, (record.get("inputs") or {}).get(p)) for p in item_inputs(item)):
            done.append(record)
        else:
            folder.forget(record)
            todo.append(item)
            redone.append(item)
    return todo, done, redone


def run_job(
    spec: JobSpec,
    items: list[dict[str, Any]],
    passed_over: list[dict[str, str]],
    options: RunOptions,
    summarise: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
    log_run: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
    collisions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Run ``items`` (dicts with ``key``, ``path``, ``rel_path``, optional ``duration_s`` and
    ``extra_inputs``: other files the item reads, fingerprinted with its ``path``).

    ``passed_over``: inputs seen but not taken, each with ``path`` and ``reason``. ``summarise(summary,
    results)`` adds the job's own figures; ``log_run(summary, results)`` logs the job's own MLflow
    metrics and artifacts. Returns the summary (also ``<out>/summary.json``). MLflow never fails
    the job: a store that cannot record leaves ``summary["mlflow_problem"]`` (one line).

    Raises:
        ConfigError: the output folder cannot be used (other settings or inputs, locked, a file,
            read-only), or an input path is a symbolic link loop.
        automaster.storage.DiskFullError: the output's disk filled up; the job stopped (finished
            items are kept and resume; the unfinished item's partial outputs were removed).
    """
    from automaster.pipelines import tracking

    folder, records, swept = prepare(spec, options)
    try:
        log_file = log_file_for(spec)
        route_logs(log_file, options.verbose)
        for rel, data in spec.files.items():
            storage.write_bytes_atomic(storage.join(spec.out, rel), data)
        todo, done, redone = split_done(folder, items, records)
        ray_mode = use_ray(len(todo), options) if todo else False
        workers = _start_backend(spec, options) if ray_mode else 1
        log.info("%s: %d items, %d complete from an earlier run, %d to do of which %d redone for a changed input (%s)",
                 spec.job, len(items), len(done), len(todo), len(redone), f"Ray, {workers} workers" if ray_mode else "in-process")
        run = tracking.JobRun(spec.experiment, spec.run_name, spec.tracking_uri, _tags(spec))
        run.start()
        run.call("log the parameters", tracking.log_params,
                 {**spec.params, "workers": workers, "mode": "ray" if ray_mode else "in-process"})
        status = "FAILED"
        try:
            results = list(_execute(spec, folder, todo, options, ray_mode, workers, log_file))
            full = next((r for r in results if r.get("disk_full")), None)
            summary = build_summary(spec, results, done, passed_over, collisions or [], ray_mode, workers, swept)
            summary.update(redone=len(redone), redone_files=[it["rel_path"] for it in redone], log_file=log_file,
                           mlflow_run_id=run.run_id, tracking_uri=run.uri)
            if summarise is not None:
                summarise(summary, results + [{**r, "status": "ok"} for r in done])
            written = _write_summary(spec, summary)
            run.call("log the summary", tracking.log_json, json.loads(json.dumps(summary, default=json_default)), SUMMARY)
            run.call("log the counts", _log_counts, summary)
            if log_run is not None and full is None:
                run.call("log the job's metrics and artifacts", log_run, summary, results)
            if full is not None or not written:
                raise storage.DiskFullError(spec.out)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            run.finish(status)
        if run.problem is not None:
            summary["mlflow_problem"] = run.problem
            _write_summary(spec, summary)
    finally:
        folder.release_lock()
    return summary


def _write_summary(spec: JobSpec, summary: dict[str, Any]) -> bool:
    """Write ``<out>/summary.json``; False when the disk is full (the write is atomic: no half file)."""
    data = json.dumps(summary, indent=2, sort_keys=True, default=json_default).encode()
    try:
        storage.write_bytes_atomic(storage.join(spec.out, SUMMARY), data)
    except OSError as exc:
        if not storage.is_disk_full(exc, spec.out):
            raise
        log.warning("summary.json not written: %s", exc)
        return False
    return True


def _start_backend(spec: JobSpec, options: RunOptions) -> int:
    from automaster.pipelines import runtime

    runtime.init_ray(options.address, log_to_driver=options.verbose)
    runtime.check_paths_visible(spec.paths)
    if spec.device == "cuda":
        if runtime.cluster_gpus() == 0:
            raise ConfigError("--gpu given but the Ray cluster has no GPU")
        return options.workers or runtime.cluster_gpus()
    return options.workers or _workers_for_memory(spec, runtime.cluster_cpus(), runtime.cluster_memory_bytes())


def _workers_for_memory(spec: JobSpec, cpus: int, memory_bytes: float) -> int:
    """One worker per CPU, but no more than the cluster's memory holds at the job's estimate of
    one worker's peak (``spec.worker_memory_bytes``: long files need more)."""
    if not spec.worker_memory_bytes or memory_bytes <= 0:
        return cpus
    fit = max(1, int(memory_bytes // spec.worker_memory_bytes))
    if fit < cpus:
        log.warning("%d workers, not %d: each may need %.1f GiB (the longest file) of the cluster's %.1f GiB",
                    fit, cpus, spec.worker_memory_bytes / 2**30, memory_bytes / 2**30)
    return min(cpus, fit)


def _tags(spec: JobSpec) -> dict[str, str]:
    return {"automaster.job": spec.job, "automaster.out": storage.display(spec.out)}


def _execute(
    spec: JobSpec, folder: OutputFolder, todo: list[dict[str, Any]], options: RunOptions, ray_mode: bool, workers: int,
    log_file: str,
) -> Iterator[dict[str, Any]]:
    if not todo:
        return
    if ray_mode:
        runner: Any = RayRunner(spec.processor, spec.processor_kwargs, spec.device, folder, options.batch, workers,
                                log_file, options.verbose)
    else:
        runner = LocalRunner(spec.processor, spec.processor_kwargs, folder, options.batch)
    failed = 0
    with _progress(len(todo), spec.job, options.progress) as bar:
        results = runner.run(todo)
        for result in results:
            failed += result["status"] != "ok"
            if result["status"] != "ok":
                log.info("%s: %s", storage.display(result["rel_path"]), result["reason"])
            bar.set_postfix_str(f"{failed} failed" if failed else "", refresh=False)
            bar.update(1)
            yield result
            if result.get("disk_full"):  # every later item would fail the same way: stop
                log.info("%s: stopping the job: %s", spec.job, result["reason"])  # the command's error line says it
                results.close()  # the runner's own clean-up (Ray: its actors stopped)
                folder.clear_staging()  # what the stopped items had begun to write
                return


@contextlib.contextmanager
def _progress(total: int, job: str, enabled: bool) -> Iterator[Any]:
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    with tqdm(total=total, desc=job, unit="item", file=sys.stderr, disable=not enabled, dynamic_ncols=True,
              mininterval=0.5 if tty else 30.0, leave=True) as bar:
        yield bar


def build_summary(
    spec: JobSpec, results: list[dict[str, Any]], done: list[dict[str, Any]], passed_over: list[dict[str, str]],
    collisions: list[dict[str, str]], ray_mode: bool, workers: int, swept: int,
) -> dict[str, Any]:
    """Every input accounted for: processed (ok or failed, with why), skipped (complete from an
    earlier run, its figures kept from its record), passed over (with why); repairs counted."""
    ok = [r for r in results if r["status"] == "ok"]
    failed = [r for r in results if r["status"] != "ok"]
    skipped = [{**r, "status": "skipped", "reason": "complete from an earlier run with the same settings"} for r in done]
    span = (max(r["t_end"] for r in results) - min(r["t_start"] for r in results)) if results else 0.0
    repaired: dict[str, dict[str, int]] = {}
    for r in ok + skipped:
        for kind, count in (r.get("repairs") or {}).items():
            entry = repaired.setdefault(kind, {"files": 0, "count": 0})
            entry["files"] += 1
            entry["count"] += int(count)
    files = sorted(({k: v for k, v in r.items() if k not in ("t_start", "t_end")} for r in results + skipped),
                   key=lambda f: f["rel_path"])
    return {
        "job": spec.job, "ok": len(ok), "failed": len(failed), "skipped": len(skipped), "passed_over": len(passed_over),
        "total": len(results) + len(skipped) + len(passed_over),
        "processing_s": span, "items_per_s": (len(results) / span) if span > 0 else 0.0,
        "mode": "ray" if ray_mode else "in-process", "workers": workers, "out": spec.out,
        "stale_files_removed": swept, "repairs": repaired, "name_collisions": collisions,
        "files": files,
        "failures": [{"key": r["key"], "rel_path": r["rel_path"], "path": r["path"], "reason": r["reason"]} for r in failed],
        "passed_over_files": passed_over,
    }


def _log_counts(summary: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_metrics({f"items_{k}": summary[k] for k in ("ok", "failed", "skipped", "passed_over")}
                       | {"items_per_s": summary["items_per_s"]})


REPAIR_WORDS = {  # what note_repair's kinds did, in the user's words
    "nonfinite_zeroed": ("non-finite sample set to 0", "non-finite samples set to 0"),
    "over_range_scaled": ("input above full scale scaled down", "inputs above full scale scaled down"),
}


def _repair_words(kind: str, count: int) -> str:
    """'45 non-finite samples set to 0' (an unknown kind: its name, spaced)."""
    one, many = REPAIR_WORDS.get(kind, (kind.replace("_", " "),) * 2)
    return f"{count} {one if count == 1 else many}"


def format_summary(job: str, summary: dict[str, Any], extra: str = "") -> str:
    """The short summary a job ends with on the console (the full one is ``summary.json``)."""
    lines = [
        f"{job}: {summary['ok']} ok, {summary['failed']} failed, {summary['skipped']} skipped (complete from an "
        f"earlier run), {summary['passed_over']} passed over; {summary['mode']}{extra}"
    ]
    if summary.get("redone"):
        lines.append(f"  redone: {summary['redone']} changed inputs (their earlier outputs were replaced)")
    lines += [f"  failed: {storage.display_name(f['rel_path'])}: {f['reason']}" for f in summary["failures"][:10]]
    if len(summary["failures"]) > 10:
        lines.append(f"  ... {len(summary['failures']) - 10} more in summary.json")
    lines += [f"  repaired: {_repair_words(kind, n['count'])} in {storage.plural(n['files'], 'file')}" for kind, n in summary["repairs"].items()]
    repeats = [p for p in summary.get("passed_over_files", []) if p.get("repeat_of")]  # a user's slip, worth a line
    lines += [f"  passed over: {storage.display_name(p['path'])}: {p['reason']}" for p in repeats[:10]]
    if len(repeats) > 10:
        lines.append(f"  ... {len(repeats) - 10} more given twice in summary.json")
    lines += [f"  renamed: {storage.display_name(c['rel_path'])} -> {storage.display_name(c['output'])} ({c['reason']})"
              for c in summary["name_collisions"]]
    lines += [f"  outputs: {summary['out']}", f"  summary: {storage.join(summary['out'], SUMMARY)}", f"  log:     {summary['log_file']}"]
    if summary.get("mlflow_problem"):
        lines.append(f"  not recorded in MLflow: {summary['mlflow_problem']}")
    else:
        lines.append(f"  MLflow:  run {summary['mlflow_run_id']} at {summary['tracking_uri']}")
    return storage.display("\n".join(lines))
