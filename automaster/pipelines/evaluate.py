"""The evaluation job: how well a model undoes demastering, next to baselines.

For every clean file (a folder, recursively, or an FMA root: its ``--split``, ``test`` by
default), a worker of the batch skeleton (:mod:`.batch`: in-process for a handful of files, else
a Ray actor) that loaded the model once (:class:`EvaluateProcessor` around
:class:`Evaluator`) reads a centred excerpt at the model rate, damages it with a generator seeded
by ``(seed, track_id)`` (our chain, pedalboard's, or the file of the same relative path under
``degraded_dir``), restores it by every inversion asked for with one
:class:`automaster.mastering.Masterer`, builds the baselines (:mod:`automaster.evaluation.baselines`)
and measures each against the clean excerpt (:mod:`automaster.evaluation.metrics`). The driver
writes ``metrics.json``, ``metrics.csv`` and ``parameters.csv`` (:mod:`automaster.evaluation.report`)
from every complete item (resumed ones included) and logs one MLflow run. A broken file is
recorded with its reason and never stops the job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np
import torch

from automaster import storage
from automaster.audio import FileError, is_audio_file, read_excerpt
from automaster.config import GIVEN, INVERSIONS, BatchConfig, ConfigError, EvalConfig, MasterConfig
from automaster.degrade import clip_rms_db
from automaster.dsp.constants import MODEL_RATE
from automaster.dsp.loudness import integrated_loudness
from automaster.evaluation import baselines
from automaster.evaluation.metrics import Reference, parameter_errors
from automaster.evaluation.report import format_table, metrics_csv, parameters_csv, summarise  # noqa: F401
from automaster.mastering import Masterer, MasteringError, default_inversion
from automaster.pipelines.batch import JobSpec, RunOptions, run_job

log = logging.getLogger(__name__)

# Inversions whose output keeps the input's phase (sample-aligned with the clean file): SI-SDR is
# meaningful for these only. Griffin-Lim invents a phase.
ALIGNED = frozenset({"identity", "identity_loudness", "normalised", "oracle_chain", "chain", "mask"})


class Evaluator:
    """Evaluates one file at a time with one loaded model (no Ray; :class:`EvaluateProcessor`
    wraps it for the batch skeleton).

    Args:
        model: checkpoint directory or ``model.pt``.
        evaluation: what to read, how to damage it, which inversions (each must suit the model).
        mastering: how the Masterer renders (its ``inversion`` is ignored: every one asked runs).
        device: torch device of the model.
    """

    def __init__(self, model: str, evaluation: EvalConfig, mastering: MasterConfig, device: str = "cpu"):
        if not evaluation.inversions:
            raise MasteringError("no inversion to evaluate")
        self.cfg = evaluation
        # One loaded model renders every inversion (master_audio(..., inversion=)).
        self.masterer = Masterer(model, evaluation.inversions[0], config=mastering, device=device)
        for inversion in evaluation.inversions[1:]:
            self.masterer.check_inversion(inversion)
        self.audio_cfg = self.masterer.audio_cfg

    def evaluate(self, row: dict[str, Any]) -> dict[str, Any]:
        """Evaluate one row (``track_id``, ``path``, ``rel_path``, optional ``degraded_path``).

        Raises:
            FileError, automaster.audio.AudioError: the file cannot be evaluated (the batch
                skeleton records the reason; one inversion failing is kept in ``inversion_errors``).
        """
        result: dict[str, Any] = {
            "track_id": row["track_id"], "rel_path": row["rel_path"], "path": row["path"], "status": "ok", "reason": "",
            "inversions": {}, "inversion_errors": {}, "inversion_notes": {}, "parameters": {}, "true_params": {},
        }
        if self.cfg.degrader == GIVEN and not row.get("degraded_path"):
            raise FileError(f"no degraded file for {row['rel_path']} under {row.get('degraded_dir')}")
        self._evaluate(row, result)
        return result

    def _damage(self, row: dict[str, Any], clean: np.ndarray) -> tuple[np.ndarray, dict[str, Any], str]:
        """``(degraded (C, T), true parameters, which are known)``."""
        cfg = self.cfg
        if cfg.degrader == "ours":
            from automaster.config import DegradeConfig
            from automaster.degrade import degrade_clip

            try:
                result = degrade_clip(clean, MODEL_RATE, cfg.seed, row["track_id"], DegradeConfig(peak_ceiling=cfg.peak_ceiling),
                                      effects=cfg.effects)
            except ValueError as exc:  # a headroom beyond the table's range
                raise FileError(f"cannot degrade: {exc}") from None
            truth = {k: v[0].numpy() for k, v in result.params.items()}
            return result.audio[0].numpy().astype(np.float32), truth, "all"
        from automaster.pedalboard_damage import pedalboard_degrade

        damaged = pedalboard_degrade(clean, MODEL_RATE, cfg.seed, row["track_id"], cfg.peak_ceiling)
        return damaged.audio, dict(damaged.params), "mapped"

    def _read(self, path: str, offset_s: float | None = None) -> tuple[np.ndarray, float]:
        cfg = self.cfg
        return read_excerpt(
            path, cfg.clip_seconds, sample_rate=MODEL_RATE, mono=cfg.mono, min_seconds=cfg.min_seconds, offset_s=offset_s
        )

    def _inputs(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any], str]:
        """``(clean, degraded, true parameters, which are known)`` for one row."""
        cfg = self.cfg
        clean, offset = self._read(row["path"])
        if cfg.degrader == GIVEN:
            degraded, _ = self._read(row["degraded_path"], offset_s=offset)
            if degraded.shape[0] != clean.shape[0]:
                raise FileError(f"clean has {clean.shape[0]} channels, degraded {degraded.shape[0]} (use --mono)")
            n = min(clean.shape[-1], degraded.shape[-1])
            clean, degraded = clean[:, :n], degraded[:, :n]
        level_db = clip_rms_db(clean)
        if level_db < cfg.silence_db:
            raise FileError(f"silent (RMS {level_db:.1f} dBFS < {cfg.silence_db:g} dBFS)")
        if cfg.degrader == GIVEN:
            return clean, degraded, {}, "none"
        # Decoded MP3/Vorbis often peaks above 0 dBFS: scale the reference down rather than clip it.
        peak = float(np.max(np.abs(clean)))
        if peak > cfg.peak_ceiling:
            clean = (clean * np.float32(cfg.peak_ceiling / peak)).astype(np.float32)
        degraded, truth, which = self._damage(row, clean)
        return clean, degraded, truth, which

    def _evaluate(self, row: dict[str, Any], result: dict[str, Any]) -> None:
        clean, degraded, truth, which = self._inputs(row)
        result["channels"], result["duration_s"] = int(clean.shape[0]), clean.shape[-1] / MODEL_RATE
        result["true_params_known"] = which
        result["true_params"] = {k: float(np.mean(np.asarray(v, dtype=np.float64))) for k, v in truth.items()}
        reference = Reference(clean, self.audio_cfg, integrated_loudness(clean, MODEL_RATE))

        # Each render gives (audio, note): the note is what a user should read beside the figures
        # (the loudness stage refused a gain, found silence or soft-clipped), "" when nothing.
        outputs: dict[str, Any] = {
            "identity": lambda: (degraded, ""),
            "identity_loudness": lambda: (baselines.identity_loudness(degraded, reference.lufs), ""),
            "normalised": lambda: baselines.normalised(degraded),
        }
        if truth:
            outputs["oracle_chain"] = lambda: (baselines.oracle_chain(degraded, truth, self.audio_cfg.hop_length), "")
        outputs["oracle_mel_griffinlim"] = lambda: (
            baselines.oracle_mel_griffinlim(clean, degraded, self.audio_cfg, self.masterer.cfg), ""
        )
        # The forecast parameters come with the chain inversion (the only one that runs the forecaster).
        forecast: dict[str, np.ndarray] = {}
        for inversion in self.cfg.inversions:
            keep = forecast if inversion == "chain" else None
            outputs[inversion] = lambda inversion=inversion, keep=keep: self._master(inversion, degraded, keep)

        for name, render in outputs.items():
            try:
                audio, note = render()
                audio = np.asarray(audio, dtype=np.float32)
                if not np.isfinite(audio).all():
                    raise FileError("NaN/Inf samples")
                result["inversions"][name] = reference.measure(audio, name in ALIGNED)
                if note:
                    result["inversion_notes"][name] = note
            except (FileError, MasteringError, ValueError) as exc:  # this inversion only
                result["inversion_errors"][name] = f"{type(exc).__name__}: {exc}"
                log.warning("%s: inversion %s failed: %s", row["rel_path"], name, exc)
        if "params_norm" in forecast and truth:
            result["parameters"] = parameter_errors(forecast["params_norm"], truth)

    def _master(self, inversion: str, degraded: np.ndarray, forecast: dict | None) -> tuple[np.ndarray, str]:
        mastered, info = self.masterer.master_audio(degraded, MODEL_RATE, inversion=inversion, images=forecast is not None)
        if forecast is not None and "params_norm" in info.get("arrays", {}):
            forecast["params_norm"] = info["arrays"]["params_norm"]
        return mastered, info.get("loudness_note") or ""


class EvaluateProcessor:
    """Loads the model once; evaluates one item (file) per :meth:`process` call (no outputs of
    its own: the figures go into the item's record, the reports are written at the end)."""

    def __init__(self, model: str, evaluation: EvalConfig, mastering: MasterConfig, device: str = "cpu"):
        if device == "cpu":
            torch.set_num_threads(1)  # one file per CPU; parallelism comes from the job's workers
        self.evaluator = Evaluator(model, evaluation, mastering, device)

    def process(self, item: dict[str, Any], staging: Any) -> dict[str, Any]:
        result = self.evaluator.evaluate(item)
        # Through JSON: plain floats and lists, as the record on disk holds them.
        return json.loads(json.dumps({k: v for k, v in result.items() if k not in ("status", "reason")}, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ------------------------------------------------------------------------------- listing
def list_clean(clean: str, split: str | None, limit: int) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Rows (``track_id``, ``path``, ``rel_path``) of the clean corpus and what was listed.

    An FMA root gives its ``split`` (``test`` unless told; ``all`` for every split); a plain
    folder gives every file unless a split is named (the corpus's hash split).

    Raises:
        automaster.corpus.CorpusError: nothing to list.
    """
    from automaster.corpus import SPLITS, scan_corpus

    scan = scan_corpus(clean)
    if split is None:
        split = "test" if scan.kind == "fma" else "all"
    if split != "all" and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} or 'all', got {split!r}")
    tracks = [t for t in scan.tracks if split == "all" or t.split == split]
    if limit:
        tracks = tracks[:limit]
    base = scan.root.rstrip("/" + os.sep)
    rows = [
        {"track_id": t.track_id, "path": t.path, "rel_path": t.path[len(base):].replace(os.sep, "/").lstrip("/")} for t in tracks
    ]
    return rows, {"kind": scan.kind, "root": scan.root, "split": split, "listed": len(scan.tracks)}


def match_degraded(rows: list[dict[str, str]], degraded_dir: str) -> list[dict[str, str]]:
    """Add ``degraded_path``: the file of the same relative path under ``degraded_dir`` (or, failing
    that, of the same path with another audio extension); ``""`` when there is none."""
    base = degraded_dir.rstrip("/" + os.sep)
    by_stem: dict[str, str] = {}
    exact: dict[str, str] = {}
    for path in storage.list_files(degraded_dir, recursive=True):
        rel = path[len(base):].replace(os.sep, "/").lstrip("/")
        if is_audio_file(rel):
            exact[rel] = path
            by_stem.setdefault(os.path.splitext(rel)[0], path)
    out = []
    for r in rows:
        degraded = exact.get(r["rel_path"]) or by_stem.get(os.path.splitext(r["rel_path"])[0], "")
        # the damaged file decides the row's figures too: fingerprinted with its clean original
        out.append({**r, "degraded_path": degraded, **({"extra_inputs": [degraded]} if degraded else {})})
    return out


# ------------------------------------------------------------------------------- the job


def _configs(model: str, evaluation: EvalConfig, mastering: MasterConfig) -> tuple[EvalConfig, MasterConfig, dict[str, Any]]:
    """The inversions to run (those asked, each checked against the model, or every one it can
    do), the Masterer's settings for clips (seeded by the evaluation's seed; one chunk per clip)
    and the model's settings; before Ray starts.

    Raises:
        MasteringError: an inversion the model cannot do, or none it can.
        automaster.model.checkpoint.CheckpointError: the model cannot be loaded.
    """
    try:
        mastering = dataclasses.replace(mastering, seed=evaluation.seed, chunk_s=max(30.0, evaluation.clip_seconds))
    except ConfigError as exc:
        raise MasteringError(str(exc)) from None
    probe = Masterer(model, default_inversion(model), config=mastering)  # the model is loaded once per process
    if evaluation.inversions:
        for inversion in evaluation.inversions:
            probe.check_inversion(inversion)  # raises with the reason
        inversions = tuple(dict.fromkeys(evaluation.inversions))
    else:
        inversions = tuple(probe.supported_inversions())
        if not inversions:
            raise MasteringError(f"the model at {model} can do none of {', '.join(INVERSIONS)}")
    mastering = dataclasses.replace(mastering, inversion=inversions[0])
    return dataclasses.replace(evaluation, inversions=inversions), mastering, probe.settings()


def _job_config(
    model: str, clean: str, degraded_dir: str | None, limit: int, listing: dict[str, Any], evaluation: EvalConfig,
    mastering: MasterConfig, model_settings: dict[str, Any],
) -> dict[str, Any]:
    """``metrics.json``'s ``config`` (also the MLflow params, less the notes)."""
    degrader = evaluation.degrader
    return {
        "model": model, "model_mode": model_settings["model_mode"], "seed": evaluation.seed, "degrader": degrader,
        "clean": clean, "degraded": degraded_dir, "corpus_kind": listing["kind"], "split": listing["split"], "limit": limit,
        "clip_seconds": evaluation.clip_seconds, "mono": evaluation.mono, "sample_rate": MODEL_RATE,
        "inversions": list(evaluation.inversions), "iterations": mastering.iterations, "init_phase": mastering.init_phase,
        "momentum": mastering.momentum, "target_lufs": mastering.target_lufs, "true_peak_dbtp": mastering.true_peak_dbtp,
        "peak_ceiling": evaluation.peak_ceiling, "effects": ",".join(evaluation.effects) if degrader == "ours" else None,
        "echo_removal": mastering.echo_removal,
        "max_forecast_error": mastering.max_forecast_error, "level_model": model_settings.get("level_model"),
        "max_limiting_db": mastering.max_limiting_db,
        "true_params": {
            "ours": "all (our degrader records them)", "pedalboard": "mapped ones (automaster.pedalboard_damage)",
            GIVEN: "none",
        }[degrader],
        "notes": {
            "identity_loudness": "oracle-level: gain-matched with the clean file's loudness",
            "normalised": "plain loudness normalisation (not an oracle): -14 LUFS, -1 dBTP, no restoration",
            "oracle_chain": {
                "ours": "inverse chain with the true parameters",
                "pedalboard": "inverse chain with the mapped true parameters, the others neutral (approximate oracle)",
                GIVEN: "absent: true parameters unknown",
            }[degrader],
            "si_sdr_db": "waveform-aligned inversions only (not Griffin-Lim)",
            "levels": "--target-lufs/--true-peak apply to the model inversions only",
        },
    }


def run_evaluate(
    model: str,
    clean: str,
    out: str,
    *,
    evaluation: EvalConfig | None = None,
    mastering: MasterConfig | None = None,
    degraded_dir: str | None = None,
    split: str | None = None,
    limit: int = 0,
    workers: int = 0,
    gpu: bool = False,
    tracking_uri: str | None = None,
    experiment: str = "automaster-evaluate",
    run_name: str | None = None,
    ray_address: str | None = None,
    ray: bool | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    progress: bool = True,
    batch: BatchConfig = BatchConfig(),
) -> dict[str, Any]:
    """Evaluate ``model`` on the clean files under ``clean``; returns ``metrics.json``'s content
    (also written to ``out`` with ``metrics.csv`` and ``parameters.csv``) plus the MLflow run id
    and the batch summary (``summary``). ``ray``: force Ray or an in-process run (None: by count).

    ``degraded_dir`` (damaged files at the clean files' relative paths) replaces the degrader.

    Raises:
        MasteringError: bad inversions or settings, ``gpu`` without a GPU.
        automaster.model.checkpoint.CheckpointError: the model cannot be loaded.
        automaster.corpus.CorpusError: no audio under ``clean``.
        ValueError: bad arguments (split, limit).
        ConfigError: an output folder holding other settings' outputs, or in use.
    """
    evaluation, mastering, rows, config = _plan(model, clean, evaluation, mastering, degraded_dir, split, limit)
    device = "cuda" if gpu else "cpu"
    spec = _job_spec(model, clean, out, degraded_dir, config, evaluation, mastering, device,
                     experiment=experiment, run_name=run_name, tracking_uri=tracking_uri)  # fmt: skip
    items = [{**r, "key": r["rel_path"], "duration_s": evaluation.clip_seconds, "degraded_dir": degraded_dir} for r in rows]
    reports: dict[str, Any] = {}
    run = RunOptions(workers=workers, ray=ray, address=ray_address, overwrite=overwrite, verbose=verbose,
                     progress=progress, batch=batch)
    try:
        summary = run_job(spec, items, [], run, summarise=_report_writer(out, config, reports),
                          log_run=lambda summary, results: _log_run(reports["metrics"], reports["files"]))
    except ConfigError as exc:
        if "GPU" in str(exc):
            raise MasteringError(str(exc)) from None
        raise
    metrics = reports["metrics"]
    metrics.update(out=out, summary=summary)
    return metrics


def _plan(
    model: str, clean: str, evaluation: EvalConfig | None, mastering: MasterConfig | None, degraded_dir: str | None,
    split: str | None, limit: int,
) -> tuple[EvalConfig, MasterConfig, list[dict[str, str]], dict[str, Any]]:  # fmt: skip
    """Check the settings and list the files, before Ray starts: (evaluation, mastering, rows, job config)."""
    evaluation = evaluation or EvalConfig()
    if degraded_dir is not None:
        evaluation = dataclasses.replace(evaluation, degrader=GIVEN)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    evaluation, mastering, model_settings = _configs(model, evaluation, mastering or MasterConfig())
    if evaluation.degrader == "pedalboard":
        from automaster.pedalboard_damage import _pedalboard

        _pedalboard()  # a clear error now rather than one per file
    rows, listing = list_clean(clean, split, limit)
    if degraded_dir is not None:
        if not storage.is_dir(degraded_dir):
            raise FileNotFoundError(f"--degraded {degraded_dir!r} is not a folder")
        rows = match_degraded(rows, degraded_dir)
    config = _job_config(model, clean, degraded_dir, limit, listing, evaluation, mastering, model_settings)
    log.info(
        "evaluate: %d files (%s %s, split %s), degrader %s, inversions %s",
        len(rows), listing["kind"], listing["root"], listing["split"], evaluation.degrader, ",".join(evaluation.inversions),
    )
    return evaluation, mastering, rows, config


def _job_spec(
    model: str, clean: str, out: str, degraded_dir: str | None, config: dict[str, Any], evaluation: EvalConfig,
    mastering: MasterConfig, device: str, *, experiment: str, run_name: str | None, tracking_uri: str | None,
) -> JobSpec:  # fmt: skip
    """The batch job: one :class:`EvaluateProcessor` per worker, ``config`` as its settings and MLflow params."""
    from automaster.pipelines.master import model_file

    return JobSpec(
        job="evaluate", out=out, processor=EvaluateProcessor,
        settings={k: v for k, v in config.items() if k not in ("model", "clean", "degraded", "notes")},
        processor_kwargs={"model": model, "evaluation": evaluation, "mastering": mastering, "device": device},
        paths={"--model": model, "--clean": clean, "--degraded": degraded_dir, "--out": out}, model=model_file(model),
        device=device, experiment=experiment, run_name=run_name, tracking_uri=tracking_uri,
        params={k: v for k, v in config.items() if k != "notes"},
    )  # fmt: skip


def _report_writer(out: str, config: dict[str, Any], reports: dict[str, Any]):
    """The job's ``summarise`` step: ``metrics.json``, ``metrics.csv`` and ``parameters.csv`` under
    ``out``; the metrics and the files' bytes also go into ``reports`` for the MLflow run."""

    def write_reports(summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
        config["workers"] = summary["workers"]
        metrics = summarise(results, config)
        metrics.update(mlflow_run_id=summary["mlflow_run_id"], tracking_uri=summary["tracking_uri"])
        files = {
            "metrics.json": json.dumps(metrics, indent=2, default=str).encode(),  # unsorted: baselines first
            "metrics.csv": metrics_csv(results).encode(),
            "parameters.csv": parameters_csv(results).encode(),
        }
        for name, data in files.items():
            storage.write_bytes_atomic(storage.join(out, name), data)
        reports.update(metrics=metrics, files=files)

    return write_reports


def _log_run(metrics: dict[str, Any], files: dict[str, bytes]) -> None:
    """The run's metrics (each inversion's means, the forecast errors) and report files to MLflow."""
    import mlflow

    from automaster.pipelines import tracking

    values = {"files_ok": metrics["config"]["n_ok"], "files_failed": metrics["config"]["n_failed"]}
    for name, entry in metrics["inversions"].items():
        for metric, stats in entry["metrics"].items():
            if stats["mean"] is not None:
                values[f"{name}/{metric}"] = stats["mean"]
    for name, entry in metrics["parameters"].items():
        if entry["abs_err"]["mean"] is not None:
            values[f"forecast/abs_err/{name}"] = entry["abs_err"]["mean"]
            values[f"forecast/mid_range_abs_err/{name}"] = entry["mid_range_abs_err"]["mean"]
    mlflow.log_metrics(values)
    for name, data in files.items():
        tracking.log_bytes_artifact(data, name)
