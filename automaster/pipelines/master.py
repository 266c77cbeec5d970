"""The master job: a folder of audio -> mastered audio, pictures and per-file figures.

Every audio file under ``input_dir`` (recursive; WAV/FLAC/OGG/MP3/AIFF) is mastered by
:class:`MasterProcessor` (one loaded model per worker, around
:class:`automaster.mastering.Masterer`), run by the batch skeleton (:mod:`.batch`): in-process
for a handful of files, else on a Ray actor pool. Outputs mirror the input's relative paths under
``audio/``, ``spectrograms/``, ``parameters/``, ``debug/`` and ``report/`` (each file's mastering
report, :mod:`automaster.mastering.report`), plus ``summary.json``; an item's
files appear together or not at all; a re-run with the same settings resumes, with others it is
refused unless ``overwrite``. Output names are unique by construction (:func:`plan_output_names`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from automaster import storage
from automaster.audio import audio_info, read_audio, write_audio
from automaster.config import BatchConfig, ConfigError, MasterConfig
from automaster.corpus import audio_files
from automaster.dsp.limiter import MASTER_MAX_GAIN_DB
from automaster.effects.params import PARAM_NAMES
from automaster.mastering import STAGES, Masterer, MasteringError, parameter_stats
from automaster.mastering.report import REPORT_DIR, build_report, estimates, report_files
from automaster.pipelines.batch import JobSpec, RunOptions, excluded_outputs, run_job

log = logging.getLogger(__name__)

AUDIO_DIR, PNG_DIR, PARAMS_DIR, DEBUG_DIR = "audio", "spectrograms", "parameters", "debug"
EXCERPT_S = 5.0
OUTPUT_NAMES = (AUDIO_DIR, PNG_DIR, PARAMS_DIR, DEBUG_DIR, REPORT_DIR)
# Output format by input extension: what soundfile writes stays, MP3/AIFF become FLAC.
_OUTPUT_EXT = {".wav": ".wav", ".flac": ".flac", ".ogg": ".ogg", ".oga": ".ogg", ".mp3": ".flac", ".aiff": ".flac", ".aif": ".flac"}
_GAIN_IMAGE_DB = 12.0  # debug images map a mel gain of +-12 dB onto the colour range
LEVEL_KEYS = (
    "lufs_before", "lufs_after", "true_peak_before_dbtp", "true_peak_after_dbtp", "peak_before_dbfs", "peak_after_dbfs",
    "limiter_max_reduction_db", "limiter_mean_reduction_db",
)
DC_NOTE_DBFS = -40.0  # a mean above this takes headroom the limiter must keep: worth a note
MIN_LUFS, MAX_LUFS = -70.0, 0.0


class MasterProcessor:
    """Loads the model once; masters one item (file) per :meth:`process` call."""

    def __init__(self, model: str, config: MasterConfig, device: str = "cpu"):
        import torch

        if device == "cpu":
            torch.set_num_threads(1)  # one file per CPU; parallelism comes from the job's workers
        self.masterer = Masterer(model, config=config, device=device)

    @classmethod
    def of(cls, masterer: Masterer) -> "MasterProcessor":
        """A processor around an already loaded :class:`Masterer`."""
        processor = cls.__new__(cls)
        processor.masterer = masterer
        return processor

    def process(self, item: dict[str, Any], staging: Any) -> dict[str, Any]:
        """Master ``item["path"]`` into ``staging``; returns levels, notes and timings.

        The figures are flat (levels, ``stage_*_s``) plus ``notes`` (a list of sentences); a
        caller that adds a ``report`` dict or more outputs stages them the same way.
        """
        import time

        stages = dict.fromkeys(STAGES, 0.0)
        t = time.perf_counter()
        info = audio_info(item["path"])
        audio, sr = read_audio(item["path"])
        stages["decode"] += time.perf_counter() - t
        mastered, levels = self.masterer.master_audio(audio, sr, images=True, stages=stages)
        arrays = levels.pop("arrays")
        finished = arrays.pop("finish")

        t = time.perf_counter()
        out_rel = item["out_rel"]
        write_audio(staging.path(f"{AUDIO_DIR}/{out_rel}"), mastered, sr, subtype="PCM_24")
        for folder, png in images(self.masterer.audio_cfg, arrays).items():
            Path(staging.path(f"{folder}/{out_rel}.png")).write_bytes(png)
        stats = None
        if "params_norm" in arrays:
            stats = parameter_stats(arrays["params_norm"], self.masterer.chain_policy())
            Path(staging.path(f"{PARAMS_DIR}/{out_rel}.json")).write_text(json.dumps(stats, indent=2))
        m = self.masterer
        report = build_report(out_rel, audio, mastered, sr, finished, estimates(levels, stats), m.reference, m.settings())
        for rel, data in report_files(out_rel, report).items():
            Path(staging.path(rel)).write_bytes(data)
        stages["writes"] += time.perf_counter() - t
        return {
            **levels, "output": f"{AUDIO_DIR}/{out_rel}", "sample_rate": sr, "channels": int(audio.shape[0]),
            "duration_s": audio.shape[1] / sr, "input_format": f"{info.format}/{info.subtype}",
            "notes": level_notes(audio, levels, levels["target_lufs"]),
            **{f"stage_{k}_s": v for k, v in stages.items()},
        }


def images(audio_cfg, arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """PNGs by folder: ``spectrograms`` (input | output mel) and ``debug`` (restored mel | mel
    gain | parameter trajectories, whichever the model has)."""
    from automaster.plots import mel_strip_png

    a = audio_cfg
    labels = {"frame_s": a.hop_length / a.sample_rate, "sample_rate": a.sample_rate}
    png = mel_strip_png([arrays["mel_input_db"], arrays["mel_output_db"]], a.db_min, a.db_max,
                        titles=["input", "output (mastered)"], **labels)  # fmt: skip
    tiles, titles = [], []
    span = a.db_max - a.db_min
    if "gain_db" in arrays:
        tiles.append(arrays["mel_model_db"] + arrays["gain_db"])  # the restored mel (mono view)
        g = np.clip(arrays["gain_db"], -_GAIN_IMAGE_DB, _GAIN_IMAGE_DB)
        tiles.append(a.db_min + (g + _GAIN_IMAGE_DB) / (2 * _GAIN_IMAGE_DB) * span)
        titles += ["restored mel (model's view, dB)", f"model gain: -{_GAIN_IMAGE_DB:g} .. +{_GAIN_IMAGE_DB:g} dB over the colour bar"]
    if "params_norm" in arrays:
        p = arrays["params_norm"]  # (P, F) in [0, 1]: one stripe per parameter, table order top-down
        rows = np.minimum(np.arange(a.n_mels) * p.shape[0] // a.n_mels, p.shape[0] - 1)
        tiles.append(a.db_min + p[rows][::-1] * span)
        titles.append("effect parameters over time (normalised to their ranges)")
        if "gain_db" not in arrays:  # the parameters alone: their names for an axis, 0..1 for the bar
            labels.update(rows=list(PARAM_NAMES), bar=(0.0, 1.0, "0 .. 1"))
    return {PNG_DIR: png, DEBUG_DIR: mel_strip_png(tiles, a.db_min, a.db_max, titles=titles, **labels)}


def master_file(masterer: Masterer, path: str, out_root: str, rel_path: str, out_rel: str | None = None) -> dict[str, Any]:
    """Master one file into ``out_root`` through the jobs' per-item path (staged outputs, record),
    without a job around it (no manifest, lock or MLflow run); returns its status dict
    (``status``, ``reason``, levels, ``output``, ...), never raises for a bad file."""
    from automaster.pipelines.outfolder import OutputFolder
    from automaster.pipelines.runners import run_item

    out_rel = out_rel or output_rel_path(rel_path)
    item = {"key": out_rel, "path": str(path), "rel_path": rel_path, "out_rel": out_rel}
    return run_item(MasterProcessor.of(masterer), item, OutputFolder(out_root))


def level_notes(audio: np.ndarray, levels: dict[str, Any], target_lufs: float | None) -> list[str]:
    """Sentences about a file's levels a user should read: a DC offset, a refused gain, silence."""
    notes = [levels["loudness_note"]] if levels.get("loudness_note") else []
    dc = float(np.max(np.abs(np.mean(audio, axis=1, dtype=np.float64))))
    if dc > 0 and 20 * math.log10(dc) > DC_NOTE_DBFS:
        notes.append(f"DC offset of {20 * math.log10(dc):.1f} dBFS in the input: it takes headroom from the "
                     "limiter, so the loudness may fall short of the target")
    before = levels.get("lufs_before")
    if target_lufs is not None and before is not None and target_lufs - before > MASTER_MAX_GAIN_DB:
        notes.append(f"the target {target_lufs:g} LUFS needs {target_lufs - before:+.1f} dB from {before:.1f} LUFS; "
                     f"gain limited to +{MASTER_MAX_GAIN_DB:g} dB (more would mostly drive the limiter)")
    return notes


# ------------------------------------------------------------------------------- planning


def output_rel_path(rel_path: str) -> str:
    """The output name of an input's relative path: same name; ``.mp3``/``.aiff`` -> ``.flac``."""
    root, ext = posixpath.splitext(rel_path)
    out_ext = _OUTPUT_EXT.get(ext.lower())
    if out_ext is None:
        raise ValueError(f"not an audio file name: {rel_path!r}")
    return root + (ext if out_ext == ext.lower() else out_ext)


def plan_output_names(rel_paths: list[str]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """``({input rel: output rel}, collisions)``: every output name unique by construction.

    An input keeps its own name when its format is written as is (``a.flac`` -> ``a.flac``);
    one converted to FLAC (``a.mp3``) takes ``a.flac``, else ``a.mp3.flac``, else
    ``a.mp3~2.flac``, ``~3``... in sorted order, so the same inputs always get the same names.
    Each input that did not get its first choice is listed in ``collisions`` with the reason.
    """
    first = {rel: output_rel_path(rel) for rel in rel_paths}
    taken = {out for rel, out in first.items() if out == rel}
    plan: dict[str, str] = {rel: rel for rel, out in first.items() if out == rel}
    collisions = []
    for rel in sorted(r for r in rel_paths if r not in plan):
        stem, ext = posixpath.splitext(first[rel])
        candidates = [first[rel], rel + ext] + [f"{rel}~{n}{ext}" for n in range(2, len(rel_paths) + 2)]
        out = next(c for c in candidates if c not in taken)
        taken.add(out)
        plan[rel] = out
        if out != first[rel]:
            collisions.append({"rel_path": rel, "output": f"{AUDIO_DIR}/{out}",
                               "reason": f"{AUDIO_DIR}/{first[rel]} is the output of another input"})
    return plan, collisions


def list_inputs(input_dir: str, out: str) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[dict[str, str]]]:
    """``(items, passed over, name collisions)`` of the audio under ``input_dir``, leaving out
    the job's own outputs (``out`` inside the input, or the same folder)."""
    files, passed = audio_files(input_dir, excluded_outputs(input_dir, out, OUTPUT_NAMES))
    plan, collisions = plan_output_names([rel for _, rel in files])
    items = []
    for path, rel in files:
        try:
            duration = audio_info(path).duration_s
        except Exception:  # an unreadable file fails in its worker, with the reason
            duration = None
        items.append({"key": plan[rel], "path": path, "rel_path": rel, "out_rel": plan[rel], "duration_s": duration})
    return items, [{"path": p, "reason": r} for p, r in passed], collisions


def check_levels(target_lufs: float | None, true_peak_dbtp: float | None) -> None:
    """Refuse level targets outside what any master could be (exit 2 on the command line)."""
    if target_lufs is not None and not (MIN_LUFS <= target_lufs <= MAX_LUFS):
        raise ConfigError(f"--target-lufs {target_lufs:g}: must be between {MIN_LUFS:g} and {MAX_LUFS:g} LUFS")
    if true_peak_dbtp is not None and not (true_peak_dbtp <= 0.0):
        raise ConfigError(f"--true-peak {true_peak_dbtp:g}: must be <= 0 dBTP (a ceiling above full scale clips)")


def model_file(model: str) -> str:
    """The weights file of a checkpoint directory or ``.pt`` (hashed into the manifest)."""
    from automaster.model.checkpoint import checkpoint_paths

    return str(checkpoint_paths(model)[0])


# ------------------------------------------------------------------------------- the job


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
    ray: bool | None = None,
    verbose: bool = False,
    progress: bool = True,
    batch: BatchConfig = BatchConfig(),
    **overrides: Any,
) -> dict[str, Any]:
    """Master every audio file under ``input_dir`` into ``out``; returns the summary (also in
    ``<out>/summary.json``). ``config`` (with ``overrides``: :class:`MasterConfig` fields) says
    how to master; ``ray`` forces Ray or an in-process run (None: by the file count).

    Raises:
        ConfigError: out-of-range levels or workers, no audio, an unusable or busy ``out``, or
            ``out`` holding outputs of other settings (without ``overwrite``).
        MasteringError: the model cannot do the inversion, bad settings, or ``gpu`` without a GPU.
        automaster.model.checkpoint.CheckpointError: the model cannot be loaded.
        FileNotFoundError: ``input_dir`` is not a folder.
    """
    # Fail before any file (and before Ray) when the settings or the checkpoint cannot work.
    probe = Masterer(model, config=config, **overrides)
    config, settings = probe.cfg, probe.settings()
    del probe
    check_levels(config.target_lufs, config.true_peak_dbtp)
    if not storage.is_dir(input_dir):
        raise FileNotFoundError(f"--input {input_dir}: not a folder")
    items, passed_over, collisions = list_inputs(input_dir, out)
    if not items:
        raise ConfigError(f"--input {input_dir}: no audio files (WAV/FLAC/OGG/MP3/AIFF) under it")
    device = "cuda" if gpu else "cpu"
    spec = JobSpec(
        job="master", out=out, settings={k: v for k, v in settings.items() if k != "model"}, processor=MasterProcessor,
        processor_kwargs={"model": model, "config": config, "device": device},
        paths={"--model": model, "--input": input_dir, "--out": out, "--reference": config.reference},
        model=model_file(model), device=device,
        experiment=experiment, run_name=run_name, tracking_uri=tracking_uri,
        params={"input": input_dir, "out": out, "gpu": gpu, "overwrite": overwrite, **settings},
    )
    run = RunOptions(workers=workers, ray=ray, address=ray_address, overwrite=overwrite, verbose=verbose,
                     progress=progress, batch=batch)
    try:
        return run_job(spec, items, passed_over, run, summarise=_summarise, collisions=collisions,
                       log_run=lambda summary, results: _log_run(summary, out, results))
    except ConfigError as exc:
        if "GPU" in str(exc):
            raise MasteringError(str(exc)) from None
        raise


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _summarise(summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """The master figures on top of the skeleton's summary (levels, echo, stage times)."""
    ok = [r for r in results if r["status"] == "ok"]
    summary["files_per_s"] = summary["items_per_s"]
    summary["seconds_per_file"] = _mean([r["seconds"] for r in ok]) or 0.0
    summary["audio_seconds_ok"] = float(sum(r.get("duration_s") or 0.0 for r in ok))
    summary["echo_removed"] = sum(bool(r.get("echo_removed")) for r in ok)
    summary["stage_seconds_mean"] = {s: (_mean([r.get(f"stage_{s}_s") for r in ok]) or 0.0) for s in STAGES}
    summary["levels_mean"] = {k: _mean([r.get(k) for r in ok]) for k in LEVEL_KEYS}
    summary["notes"] = {r["rel_path"]: r["notes"] for r in ok if r.get("notes")}


def summary_table(summary: dict[str, Any], limit: int = 20) -> str:
    """The processed files as a text table: LUFS in -> out, true peak out, what was applied (the
    echo stage, then :func:`automaster.mastering.finishing.levels_info`'s ``applied``, then its
    ``loudness_note`` when the loudness stage did nothing: why a near-silent file kept its level)."""
    rows = [f for f in summary["files"] if f["status"] in ("ok", "skipped")][:limit]
    if not rows:
        return ""
    width = min(max(len(storage.display_name(f["rel_path"])) for f in rows), 48)
    lines = [f"  {'file':<{width}}  {'LUFS in -> out':>16}  {'dBTP':>6}  applied"]
    for f in rows:
        lufs = f"{_fmt(f.get('lufs_before'))} -> {_fmt(f.get('lufs_after'))}"
        note = f.get("loudness_note") or ""  # the soft clipper's note is long, and "applied" says it
        applied = ", ".join(a for a in ("echo removed" if f.get("echo_removed") else "", f.get("applied") or "",
                                        note if note.startswith(("refused", "silent")) else "") if a)  # fmt: skip
        lines.append(f"  {storage.display_name(f['rel_path'])[:width]:<{width}}  {lufs:>16}  {_fmt(f.get('true_peak_after_dbtp')):>6}"
                     f"  {applied or '-'}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _log_run(summary: dict[str, Any], out: str, results: list[dict[str, Any]]) -> None:
    import mlflow

    from automaster.pipelines import tracking

    metrics = {
        "files_ok": summary["ok"], "files_failed": summary["failed"], "files_skipped": summary["skipped"],
        "files_passed_over": summary["passed_over"], "files_per_s": summary["files_per_s"],
        "files_echo_removed": summary["echo_removed"], "seconds_per_file": summary["seconds_per_file"],
        "audio_seconds_ok": summary["audio_seconds_ok"],
        **{f"stage_{k}_s": v for k, v in summary["stage_seconds_mean"].items()},
        **{f"mean_{k}": v for k, v in summary["levels_mean"].items() if v is not None},
    }
    mlflow.log_metrics(metrics)
    ok = sorted((r for r in results if r["status"] == "ok"), key=lambda r: r["rel_path"])
    for step, r in enumerate(ok):  # per-file levels and timing, one step per file (sorted by name)
        mlflow.log_metrics(
            {f"file/{k}": float(r[k]) for k in (*LEVEL_KEYS, "seconds", "headroom_gain_db") if r.get(k) is not None}, step=step
        )
    for r in ok[:4]:
        png = storage.join(out, PNG_DIR, r["output"][len(AUDIO_DIR) + 1 :] + ".png")
        if storage.exists(png):
            tracking.log_bytes_artifact(storage.read_bytes(png), _flat_name(r["rel_path"]) + ".png", "spectrograms")
    for r in ok[:2]:
        _log_excerpt(storage.join(out, r["output"]), _flat_name(r["rel_path"]))


def _flat_name(rel: str) -> str:
    return storage.display(rel).replace("/", "__").replace("\ufffd", "_")


def _log_excerpt(path: str, name: str) -> None:
    """The first :data:`EXCERPT_S` seconds of an output as a WAV artifact under ``audio/``."""
    import mlflow

    try:
        audio, sr = read_audio(path, duration_s=EXCERPT_S)
        with tempfile.TemporaryDirectory() as tmp:
            target = os.path.join(tmp, f"{name}.excerpt.wav")
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            write_audio(target, audio / max(peak, 1.0), sr, subtype="PCM_16")  # Vorbis decodes may exceed 1
            mlflow.log_artifact(target, "audio")
    except Exception as exc:  # an excerpt must never fail a finished job
        log.warning("audio excerpt of %s not logged: %s", storage.display(path), exc)
