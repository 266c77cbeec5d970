"""The master job: a folder of audio -> mastered audio and pictures, on Ray Data.

Every audio file under ``input_dir`` (recursive; WAV/FLAC/OGG/MP3/AIFF) is mastered by an actor
pool whose actors load the model once (:class:`MasterProcessor`, around
:class:`automaster.mastering.Masterer`). Outputs go to ``out`` in the thesis layout
(``audio/``, ``spectrograms/``, ``parameters/``, ``debug/`` mirroring the input's relative paths,
and ``summary.json``). Files whose output audio exists are skipped unless ``overwrite``; other
files are listed as ignored; broken files are recorded with their reason and never stop the job.
One MLflow run per job.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from automaster import storage
from automaster.audio import AudioError, audio_info, is_audio_file, read_audio, write_audio
from automaster.config import MasterConfig
from automaster.mastering import STAGES, FileError, Masterer, MasteringError, parameter_stats

log = logging.getLogger(__name__)

AUDIO_DIR, PNG_DIR, PARAMS_DIR, DEBUG_DIR = "audio", "spectrograms", "parameters", "debug"
EXCERPT_S = 5.0
# Output format by input extension: what soundfile writes stays, MP3/AIFF become FLAC.
_OUTPUT_EXT = {".wav": ".wav", ".flac": ".flac", ".ogg": ".ogg", ".oga": ".ogg", ".mp3": ".flac", ".aiff": ".flac", ".aif": ".flac"}
_GAIN_IMAGE_DB = 12.0  # debug images map a mel gain of +-12 dB onto the colour range
_LEVEL_KEYS = (
    "lufs_before", "lufs_after", "true_peak_before_dbtp", "true_peak_after_dbtp", "peak_before_dbfs", "peak_after_dbfs",
    "limiter_max_reduction_db", "limiter_mean_reduction_db",
)


# ------------------------------------------------------------------------ one file's outputs


def output_rel_path(rel_path: str) -> str:
    """The output name of an input's relative path: same name; ``.mp3``/``.aiff`` -> ``.flac``."""
    root, ext = posixpath.splitext(rel_path)
    out_ext = _OUTPUT_EXT.get(ext.lower())
    if out_ext is None:
        raise ValueError(f"not an audio file name: {rel_path!r}")
    return root + (ext if out_ext == ext.lower() else out_ext)


def plan_outputs(rel_paths: list[str]) -> dict[str, str]:
    """``{input rel: output rel}``; an MP3 whose FLAC name is taken (``a.mp3`` next to ``a.flac``)
    keeps its extension in the name (``a.mp3.flac``) so no output overwrites another."""
    plan: dict[str, str] = {}
    taken = {output_rel_path(r) for r in rel_paths if output_rel_path(r) == r}
    for rel in sorted(rel_paths):
        out = output_rel_path(rel)
        if out != rel and out in taken:
            out = rel + ".flac"
        taken.add(out)
        plan[rel] = out
    return plan


def master_file(masterer: Masterer, path: str, out_root: str, rel_path: str, out_rel: str | None = None) -> dict[str, Any]:
    """Master one file and write its outputs under ``out_root``; never raises for a bad file.

    Writes ``audio/<out_rel>`` (24-bit), ``spectrograms/<out_rel>.png`` (input | output mel),
    ``parameters/<out_rel>.json`` (models that forecast parameters) and ``debug/<out_rel>.png``.
    Returns a flat status dict: ``status`` (``ok``/``error``), ``reason``, levels, ``seconds``,
    ``stage_*_s``, ``output`` (relative to ``out_root``), sample rate, channels, duration.
    """
    out_rel = out_rel or output_rel_path(rel_path)
    status: dict[str, Any] = {
        "path": str(path), "rel_path": rel_path, "output": f"{AUDIO_DIR}/{out_rel}", "status": "ok", "reason": "",
        "sample_rate": None, "channels": None, "duration_s": None, "t_start": time.time(),
    }
    stages = dict.fromkeys(STAGES, 0.0)
    t0 = time.perf_counter()
    try:
        status.update(_master_file(masterer, str(path), out_root, out_rel, stages))
    except (AudioError, FileError) as exc:
        status.update(status="error", reason=str(exc))
    except Exception as exc:  # per-item boundary of a batch: record, never abort the batch
        log.error("%s failed unexpectedly:\n%s", path, traceback.format_exc())
        status.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    status["seconds"] = time.perf_counter() - t0
    status["t_end"] = time.time()
    status.update({f"stage_{k}_s": v for k, v in stages.items()})
    return status


def _master_file(masterer: Masterer, path: str, out_root: str, out_rel: str, stages: dict[str, float]) -> dict[str, Any]:
    t = time.perf_counter()
    info = audio_info(path)
    audio, sr = read_audio(path)
    stages["decode"] += time.perf_counter() - t
    mastered, levels = masterer.master_audio(audio, sr, images=True, stages=stages)
    arrays = levels.pop("arrays")

    t = time.perf_counter()
    write_audio(storage.join(out_root, AUDIO_DIR, out_rel), mastered, sr, subtype="PCM_24")
    write_images(masterer.audio_cfg, out_root, out_rel, arrays)
    if "params_norm" in arrays:
        stats = parameter_stats(arrays["params_norm"], masterer.chain_policy())
        storage.write_bytes_atomic(
            storage.join(out_root, PARAMS_DIR, out_rel + ".json"), json.dumps(stats, indent=2).encode()
        )
    stages["writes"] += time.perf_counter() - t
    return {
        **levels, "sample_rate": sr, "channels": int(audio.shape[0]), "duration_s": audio.shape[1] / sr,
        "input_format": f"{info.format}/{info.subtype}",
    }


def write_images(audio_cfg, out_root: str, out_rel: str, arrays: dict[str, np.ndarray]) -> None:
    """``spectrograms/<out_rel>.png`` (input | output mel) and ``debug/<out_rel>.png`` (restored
    mel | mel gain | parameter trajectories, whichever the model has)."""
    from automaster.plots import mel_strip_png

    a = audio_cfg
    png = mel_strip_png([arrays["mel_input_db"], arrays["mel_output_db"]], a.db_min, a.db_max)
    storage.write_bytes_atomic(storage.join(out_root, PNG_DIR, out_rel + ".png"), png)
    tiles = []
    span = a.db_max - a.db_min
    if "gain_db" in arrays:
        tiles.append(arrays["mel_model_db"] + arrays["gain_db"])  # the restored mel (mono view)
        g = np.clip(arrays["gain_db"], -_GAIN_IMAGE_DB, _GAIN_IMAGE_DB)
        tiles.append(a.db_min + (g + _GAIN_IMAGE_DB) / (2 * _GAIN_IMAGE_DB) * span)
    if "params_norm" in arrays:
        p = arrays["params_norm"]  # (P, F) in [0, 1]: one stripe per parameter, table order top-down
        rows = np.minimum(np.arange(a.n_mels) * p.shape[0] // a.n_mels, p.shape[0] - 1)
        tiles.append(a.db_min + p[rows][::-1] * span)
    debug = mel_strip_png(tiles, a.db_min, a.db_max)
    storage.write_bytes_atomic(storage.join(out_root, DEBUG_DIR, out_rel + ".png"), debug)


# ------------------------------------------------------------------------------------ the job


class MasterProcessor:
    """Ray Data callable class: loads the model once, masters one row (file) per call."""

    def __init__(self, model: str, out: str, config: MasterConfig, device: str = "cpu"):
        import torch

        if device == "cpu":
            torch.set_num_threads(1)  # one file per CPU; parallelism comes from Ray
        self.out = out
        self.masterer = Masterer(model, config=config, device=device)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return master_file(self.masterer, row["path"], self.out, row["rel_path"], row["out_rel"])


def list_inputs(input_dir: str, out: str | None = None) -> tuple[list[dict[str, str]], list[str]]:
    """``(audio rows, ignored relative paths)`` under ``input_dir``; hidden entries and anything
    under ``out`` (when it lies inside the input) are left out entirely."""
    base = input_dir.rstrip("/" + os.sep)
    out_prefix = None
    if out is not None and storage.is_local(out) and storage.is_local(input_dir):
        out_abs, in_abs = os.path.abspath(storage.local_path(out)), os.path.abspath(storage.local_path(input_dir))
        if out_abs.startswith(in_abs + os.sep):
            out_prefix = os.path.relpath(out_abs, in_abs).replace(os.sep, "/") + "/"
    audio, ignored = [], []
    for path in storage.list_files(input_dir, recursive=True):
        rel = path[len(base):].replace(os.sep, "/").lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")) or (out_prefix and rel.startswith(out_prefix)):
            continue
        (audio if is_audio_file(rel) else ignored).append((path, rel))
    plan = plan_outputs([rel for _, rel in audio])
    rows = [{"path": path, "rel_path": rel, "out_rel": plan[rel]} for path, rel in audio]
    return rows, sorted(rel for _, rel in ignored)


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _summarise(
    results: list[dict[str, Any]], skipped: list[dict[str, str]], ignored: list[str], settings: dict[str, Any],
    workers: int, out: str,
) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == "ok"]
    failed = [r for r in results if r["status"] != "ok"]
    span = (max(r["t_end"] for r in results) - min(r["t_start"] for r in results)) if results else 0.0
    files = sorted(
        [{k: v for k, v in r.items() if k not in ("t_start", "t_end")} for r in results]
        + [{"rel_path": s["rel_path"], "path": s["path"], "output": f"{AUDIO_DIR}/{s['out_rel']}", "status": "skipped",
            "reason": "output exists (use --overwrite to redo)"} for s in skipped],
        key=lambda f: f["rel_path"],
    )
    return {
        "ok": len(ok),
        "failed": len(failed),
        "skipped": len(skipped),
        "ignored": len(ignored),
        "total": len(results) + len(skipped),
        "files_per_s": (len(results) / span) if span > 0 else 0.0,
        "processing_s": span,
        "seconds_per_file": _mean([r["seconds"] for r in ok]) or 0.0,
        "audio_seconds_ok": float(sum(r["duration_s"] or 0.0 for r in ok)),
        "echo_removed": sum(bool(r.get("echo_removed")) for r in ok),
        "stage_seconds_mean": {s: (_mean([r[f"stage_{s}_s"] for r in ok]) or 0.0) for s in STAGES},
        "levels_mean": {k: _mean([r.get(k) for r in ok]) for k in _LEVEL_KEYS},
        "settings": settings,
        "workers": workers,
        "out": out,
        "files": files,
        "failures": [{"rel_path": r["rel_path"], "path": r["path"], "reason": r["reason"]} for r in failed],
        "ignored_files": [{"rel_path": rel, "reason": "not an audio file"} for rel in ignored],
    }


def run_master(
    model: str,
    input_dir: str,
    out: str,
    *,
    config: MasterConfig | None = None,
    workers: int = 0,
    gpu: bool = False,
    overwrite: bool = False,
    tracking_uri: str | None = None,
    experiment: str = "automaster-master",
    run_name: str | None = None,
    ray_address: str | None = None,
    progress_every_s: float = 10.0,
    **overrides: Any,
) -> dict[str, Any]:
    """Master every audio file under ``input_dir`` into ``out``; returns the summary (also in
    ``<out>/summary.json``).

    ``config`` (with ``overrides``: :class:`MasterConfig` fields) says how to master.

    Raises:
        MasteringError: the model cannot do the inversion, bad settings, or ``gpu`` without a GPU.
        automaster.model.checkpoint.CheckpointError: the model cannot be loaded.
        FileNotFoundError: ``input_dir`` is not a folder.
    """
    import ray

    from automaster.pipelines import runtime, tracking

    # Fail before any file (and before Ray) when the checkpoint cannot do what is asked.
    probe = Masterer(model, config=config, **overrides)
    config, settings = probe.cfg, probe.settings()
    del probe
    rows, ignored = list_inputs(input_dir, out)
    storage.makedirs(out)
    todo = rows if overwrite else [r for r in rows if not storage.exists(storage.join(out, AUDIO_DIR, r["out_rel"]))]
    todo_names = {r["out_rel"] for r in todo}
    done = [r for r in rows if r["out_rel"] not in todo_names]
    log.info("%s: %d audio files (%d already mastered), %d other files ignored", input_dir, len(rows), len(done), len(ignored))

    runtime.init_ray(ray_address)
    runtime.check_paths_visible({"--model": model, "--input": input_dir, "--out": out})
    if gpu and runtime.cluster_gpus() == 0:
        raise MasteringError("--gpu given but the Ray cluster has no GPU")
    workers = workers or (runtime.cluster_gpus() if gpu else runtime.cluster_cpus())
    with tracking.start_run(experiment, run_name, tracking_uri, tags={"automaster.job": "master"}) as run:
        tracking.log_params({"input": input_dir, "out": out, "workers": workers, "gpu": gpu, "overwrite": overwrite, **settings})
        results: list[dict[str, Any]] = []
        if todo:
            resources = {"num_gpus": 1} if gpu else {"num_cpus": 1}
            ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 1000)).map(
                MasterProcessor,
                fn_constructor_kwargs={"model": model, "out": out, "config": config, "device": "cuda" if gpu else "cpu"},
                compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(todo)))),
                **resources,
            )
            last = time.time()
            for status in ds.iter_rows():
                status = dict(status)
                results.append(status)
                if status["status"] != "ok":
                    log.warning("%s: %s", status["rel_path"], status["reason"])
                if time.time() - last >= progress_every_s or len(results) == len(todo):
                    last = time.time()
                    n_failed = sum(r["status"] != "ok" for r in results)
                    log.info("master: %d/%d files done (%d failed)", len(results), len(todo), n_failed)
        summary = _summarise(results, done, ignored, settings, workers, out)
        summary["mlflow_run_id"] = run.info.run_id
        summary["tracking_uri"] = tracking.resolve_tracking_uri(tracking_uri)
        storage.write_bytes_atomic(storage.join(out, "summary.json"), tracking.dumps(summary).encode())
        _log_run(summary, out, results)
    return summary


def _log_run(summary: dict[str, Any], out: str, results: list[dict[str, Any]]) -> None:
    import mlflow

    from automaster.pipelines import tracking

    metrics = {
        "files_ok": summary["ok"], "files_failed": summary["failed"], "files_skipped": summary["skipped"],
        "files_ignored": summary["ignored"], "files_per_s": summary["files_per_s"], "files_echo_removed": summary["echo_removed"],
        "seconds_per_file": summary["seconds_per_file"], "audio_seconds_ok": summary["audio_seconds_ok"],
        **{f"stage_{k}_s": v for k, v in summary["stage_seconds_mean"].items()},
        **{f"mean_{k}": v for k, v in summary["levels_mean"].items() if v is not None},
    }
    mlflow.log_metrics(metrics)
    ok = sorted((r for r in results if r["status"] == "ok"), key=lambda r: r["rel_path"])
    for step, r in enumerate(ok):  # per-file levels and timing, one step per file (sorted by name)
        mlflow.log_metrics(
            {f"file/{k}": float(r[k]) for k in (*_LEVEL_KEYS, "seconds", "headroom_gain_db") if r.get(k) is not None}, step=step
        )
    tracking.log_json(summary, "summary.json")
    for r in ok[:4]:
        png = storage.join(out, PNG_DIR, r["output"][len(AUDIO_DIR) + 1 :] + ".png")
        if storage.exists(png):
            tracking.log_bytes_artifact(storage.read_bytes(png), _flat_name(r["rel_path"]) + ".png", "spectrograms")
    for r in ok[:2]:
        _log_excerpt(storage.join(out, r["output"]), _flat_name(r["rel_path"]))


def _flat_name(rel: str) -> str:
    return rel.replace("/", "__")


def _log_excerpt(path: str, name: str) -> None:
    """The first :data:`EXCERPT_S` seconds of an output as a WAV artifact under ``audio/``."""
    import mlflow

    from automaster.audio import read_audio, write_audio

    try:
        audio, sr = read_audio(path, duration_s=EXCERPT_S)
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / f"{name}.excerpt.wav"
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            write_audio(target, audio / max(peak, 1.0), sr, subtype="PCM_16")  # Vorbis decodes may exceed 1
            mlflow.log_artifact(str(target), "audio")
    except Exception as exc:  # an excerpt must never fail a finished job
        log.warning("audio excerpt of %s not logged: %s", path, exc)
