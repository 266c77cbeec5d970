"""The evaluation job: how well a model undoes demastering, next to baselines, on Ray Data.

For every clean file (a folder, recursively, or an FMA root: its ``--split``, ``test`` by
default), an actor that loaded the model once (:class:`EvaluateProcessor` around
:class:`Evaluator`):

1. reads a centred excerpt of ``clip_seconds`` at 44.1 kHz, keeping its channels (the Masterer
   masters any channel count; ``mono`` downmixes);
2. damages it with a generator seeded by ``(seed, track_id)``: our chain
   (:mod:`automaster.degrade`, its true parameters known), pedalboard's
   (:mod:`automaster.foreign`, parameters known where they map onto ours), or takes the file of
   the same relative path under ``degraded_dir`` (true parameters unknown);
3. restores it by every inversion the model can do (``chain``, ``mask``, ``griffinlim``) with
   :meth:`automaster.mastering.Masterer.master_audio`, and builds the baselines:

   * ``identity``: the degraded input, untouched;
   * ``identity_loudness``: the degraded input gain-matched to the clean file's integrated
     loudness. An oracle: it knows the clean loudness;
   * ``oracle_chain``: the inverse chain driven by the *true* parameters (for pedalboard damage,
     the mapped ones, the rest neutral: an approximate oracle; absent for given pairs);
   * ``oracle_mel_griffinlim``: Griffin-Lim from the *clean* mel with the griffinlim path's
     settings: the ceiling of that path;

4. measures every output against the clean excerpt: SI-SDR (waveform-aligned paths only),
   multi-resolution STFT distance (:class:`automaster.model.losses.MultiResolutionSTFTLoss`,
   FFT sizes 512/1024/2048), mel L1 in dB, integrated-loudness error in LU, true peak in dBTP;
   and the forecast parameters (those the ``chain`` path applies) against the true ones in
   physical units.

Outputs: ``<out>/metrics.json`` (configuration, per path mean/median/per-file values,
per-parameter errors, failures), ``<out>/metrics.csv`` (one row per file x path),
``<out>/parameters.csv`` (one row per file x parameter) and one MLflow run with the means as
``<path>/<metric>`` metrics and the files as artifacts. A broken file is recorded with its reason
and never stops the job.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
import traceback
from typing import Any

import numpy as np
import torch

from automaster import storage
from automaster.audio import AudioError, audio_info, is_audio_file, read_audio
from automaster.mastering import INVERSIONS, MAX_FORECAST_ERROR, FileError, Masterer, MasteringError, griffinlim_audio

log = logging.getLogger(__name__)

EVAL_RATE = 44100  # the model's analysis rate: every clip is evaluated at it
DEGRADERS = ("ours", "pedalboard")
GIVEN = "given"  # the degrader name recorded for --degraded pairs
BASELINES = ("identity", "identity_loudness", "oracle_chain", "oracle_mel_griffinlim")
PATHS = BASELINES + INVERSIONS
# Paths whose output keeps the input's phase (sample-aligned with the clean file): SI-SDR is
# meaningful for these only. Griffin-Lim invents a phase.
ALIGNED = frozenset({"identity", "identity_loudness", "oracle_chain", "chain", "mask"})
METRICS = ("si_sdr_db", "mrstft", "mel_l1_db", "loudness_err_lu", "true_peak_dbtp")
LOWER_IS_BETTER = {"si_sdr_db": False, "mrstft": True, "mel_l1_db": True, "loudness_err_lu": True, "true_peak_dbtp": None}
DESCRIPTIONS = {
    "identity": "the degraded input, untouched",
    "identity_loudness": "the degraded input gain-matched to the clean loudness (oracle: knows the clean LUFS)",
    "oracle_chain": "the inverse chain driven by the true parameters (oracle)",
    "oracle_mel_griffinlim": "Griffin-Lim from the clean mel, the griffinlim path's settings (ceiling of that path)",
    "chain": "model: forecast parameters drive the inverse chain",
    "mask": "model: U-Net mel gain on the input STFT",
    "griffinlim": "model: restored mel through Griffin-Lim",
}
MIN_SECONDS = 1.0  # shorter clips are rejected (too few frames to mean anything)
SILENCE_DB = -70.0  # RMS below this (dBFS) is silence: no loudness, nothing to restore


# ------------------------------------------------------------------------------- measuring


_MRSTFT = None


def mrstft_distance(estimate: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> float:
    """Multi-resolution STFT distance (spectral convergence + log-magnitude L1, FFT sizes
    512/1024/2048, averaged) of ``(C, T)`` or ``(B, C, T)`` audio: the training loss's definition."""
    global _MRSTFT
    from automaster.model.losses import MultiResolutionSTFTLoss

    if _MRSTFT is None:
        _MRSTFT = MultiResolutionSTFTLoss()
    est, ref = (torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in (estimate, reference))
    if est.dim() == 2:
        est, ref = est[None], ref[None]
    with torch.no_grad():
        return float(_MRSTFT(est, ref))


def _mel_db(audio: np.ndarray, audio_cfg) -> torch.Tensor:
    from automaster.dsp.mel import melspectrogram
    from automaster.dsp.scale import power_to_db

    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    return power_to_db(melspectrogram(x, EVAL_RATE, audio_cfg.n_fft, audio_cfg.hop_length, audio_cfg.n_mels))


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def measure(
    output: np.ndarray, clean: np.ndarray, clean_mel_db: torch.Tensor, clean_lufs: float, aligned: bool, audio_cfg
) -> dict[str, float | None]:
    """Every metric of ``output`` ``(C, T)`` against ``clean`` (``None`` where it does not apply)."""
    from automaster.dsp.loudness import true_peak_dbtp
    from automaster.dsp.metrics import loudness_error_lu, mel_l1_db, si_sdr

    return {
        "si_sdr_db": _finite(si_sdr(output, clean)) if aligned else None,
        "mrstft": _finite(mrstft_distance(output, clean)),
        "mel_l1_db": _finite(mel_l1_db(_mel_db(output, audio_cfg), clean_mel_db)),
        "loudness_err_lu": _finite(loudness_error_lu(output, None, EVAL_RATE, reference_lufs=clean_lufs)),
        "true_peak_dbtp": _finite(true_peak_dbtp(output, EVAL_RATE)),
    }


def parameter_errors(params_norm: np.ndarray, truth: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Forecast ``(P, F)`` (normalised) against the true parameters, in physical units.

    ``truth``: name -> per-frame trajectory or per-clip value (only the known ones). Per-clip
    forecasts are the track mean of the normalised prediction, denormalised (what the chain
    applies); trajectories are compared frame by frame after resampling to the truth's frames.
    ``mid_range_abs_err`` is the error of always predicting the middle of the range, a baseline.
    """
    from automaster.effects.params import PARAMS, resample_frames

    norm = torch.from_numpy(np.asarray(params_norm, dtype=np.float32))
    out = {}
    for i, p in enumerate(PARAMS):
        if p.name not in truth:
            continue
        true = torch.as_tensor(np.asarray(truth[p.name], dtype=np.float32)).reshape(-1)
        if p.per_frame:
            pred = p.denormalize(resample_frames(norm[i][None], max(true.numel(), 1))[0])
            if true.numel() == 1:
                true = true.expand_as(pred)
        else:
            pred = p.denormalize(norm[i].mean()).reshape(1)
        mid = p.denormalize(torch.tensor(0.5))
        out[p.name] = {
            "true": float(true.mean()), "predicted": float(pred.mean()),
            "abs_err": float((pred - true).abs().mean()), "mid_range_abs_err": float((mid - true).abs().mean()),
        }
    return out


# ------------------------------------------------------------------------------- reading


def read_clip(path: str, clip_seconds: float, mono: bool, offset_s: float | None = None) -> tuple[np.ndarray, float]:
    """A centred excerpt (or one at ``offset_s``) at 44.1 kHz: ``(audio (C, T), offset_s)``."""
    info = audio_info(path)
    if info.duration_s < MIN_SECONDS:
        raise FileError(f"too short: {info.duration_s:.2f} s (minimum {MIN_SECONDS:g} s)")
    clip_s = min(clip_seconds, info.duration_s)
    if offset_s is None:
        offset_s = max(0.0, (info.duration_s - clip_s) / 2.0)  # centred, as the demaster job
    audio, _ = read_audio(path, sample_rate=EVAL_RATE, mono=mono, offset_s=offset_s, duration_s=clip_s)
    if audio.shape[-1] < MIN_SECONDS * EVAL_RATE * 0.99:
        raise FileError(f"too short after decoding: {audio.shape[-1] / EVAL_RATE:.2f} s")
    return np.ascontiguousarray(audio, dtype=np.float32), offset_s


def _rms_db(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20.0 * math.log10(max(rms, 1e-12))


# ------------------------------------------------------------------------------- evaluator


class Evaluator:
    """Evaluates one file at a time with one loaded model (no Ray; :class:`EvaluateProcessor`
    wraps it for Ray Data).

    Args:
        model: checkpoint directory or ``model.pt``.
        inversions: the model paths to run (each must suit the model's mode).
        settings: ``seed``, ``degrader`` (``ours``/``pedalboard``/``given``), ``clip_seconds``,
            ``mono``, ``peak_ceiling``.
        options: :class:`Masterer` keyword arguments (``iterations``, ``init_phase``,
            ``target_lufs``, ``true_peak_dbtp``, ...).
        device: torch device of the model.
    """

    def __init__(self, model: str, inversions: list[str], settings: dict[str, Any], options: dict[str, Any], device: str = "cpu"):
        if not inversions:
            raise MasteringError("no inversion to evaluate")
        self.settings = dict(settings)
        self.options = dict(options)
        # One loaded model renders every inversion (master_audio(..., inversion=)).
        self.masterer = Masterer(model, inversion=inversions[0], device=device, **options)
        for inversion in inversions[1:]:
            self.masterer.check_inversion(inversion)
        self.inversions = list(inversions)
        self.audio_cfg = self.masterer.audio_cfg

    def evaluate(self, row: dict[str, Any]) -> dict[str, Any]:
        """Evaluate one row (``track_id``, ``path``, ``rel_path``, optional ``degraded_path``);
        never raises: a broken file comes back with ``status="error"`` and its ``reason``."""
        result: dict[str, Any] = {
            "track_id": row["track_id"], "rel_path": row["rel_path"], "path": row["path"], "status": "ok", "reason": "",
            "paths": {}, "path_errors": {}, "parameters": {}, "true_params": {},
        }
        t0 = time.perf_counter()
        try:
            self._evaluate(row, result)
        except (AudioError, FileError) as exc:
            result.update(status="error", reason=str(exc))
        except Exception as exc:  # per-item boundary of a batch: record, never abort the batch
            log.error("%s failed unexpectedly:\n%s", row["path"], traceback.format_exc())
            result.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        result["seconds"] = time.perf_counter() - t0
        return result

    def _damage(self, row: dict[str, Any], clean: np.ndarray) -> tuple[np.ndarray, dict[str, Any], str]:
        """``(degraded (C, T), true parameters, what they are)``."""
        s = self.settings
        if s["degrader"] == "ours":
            from automaster.config import DegradeConfig
            from automaster.degrade import degrade, draw_params, make_generator

            cfg = DegradeConfig(peak_ceiling=s["peak_ceiling"])
            gen = make_generator(s["seed"], row["track_id"])
            n_frames = 1 + clean.shape[-1] // self.audio_cfg.hop_length
            params = draw_params(n_frames, gen, cfg, clip_rms_db=_rms_db(clean))
            try:
                result = degrade(torch.from_numpy(clean)[None], EVAL_RATE, params, gen, cfg)
            except ValueError as exc:  # a headroom beyond the table's range
                raise FileError(f"cannot degrade: {exc}") from None
            truth = {k: v[0].numpy() for k, v in result.params.items()}
            return result.audio[0].numpy().astype(np.float32), truth, "all"
        if s["degrader"] == "pedalboard":
            from automaster.foreign import pedalboard_degrade

            damaged = pedalboard_degrade(clean, EVAL_RATE, s["seed"], row["track_id"], s["peak_ceiling"])
            return damaged.audio, dict(damaged.params), "mapped"
        raise AssertionError(f"unknown degrader {s['degrader']!r}")

    def _inputs(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any], str]:
        """``(clean, degraded, true parameters, which)`` for one row."""
        s = self.settings
        clean, offset = read_clip(row["path"], s["clip_seconds"], s["mono"])
        if s["degrader"] == GIVEN:
            degraded, _ = read_clip(row["degraded_path"], s["clip_seconds"], s["mono"], offset_s=offset)
            if degraded.shape[0] != clean.shape[0]:
                raise FileError(f"clean has {clean.shape[0]} channels, degraded {degraded.shape[0]} (use --mono)")
            n = min(clean.shape[-1], degraded.shape[-1])
            clean, degraded = clean[:, :n], degraded[:, :n]
        if _rms_db(clean) < SILENCE_DB:
            raise FileError(f"silent (RMS {_rms_db(clean):.1f} dBFS < {SILENCE_DB:g} dBFS)")
        if s["degrader"] == GIVEN:
            return clean, degraded, {}, "none"
        # Decoded MP3/Vorbis often peaks above 0 dBFS: scale the reference down rather than clip it.
        peak = float(np.max(np.abs(clean)))
        if peak > s["peak_ceiling"]:
            clean = (clean * np.float32(s["peak_ceiling"] / peak)).astype(np.float32)
        degraded, truth, which = self._damage(row, clean)
        return clean, degraded, truth, which

    def _evaluate(self, row: dict[str, Any], result: dict[str, Any]) -> None:
        from automaster.dsp.loudness import integrated_loudness, loudness_gain_db

        clean, degraded, truth, which = self._inputs(row)
        result["channels"], result["duration_s"] = int(clean.shape[0]), clean.shape[-1] / EVAL_RATE
        result["true_params_known"] = which
        result["true_params"] = {k: _summary_value(v) for k, v in truth.items()}
        clean_mel = _mel_db(clean, self.audio_cfg)
        clean_lufs = integrated_loudness(clean, EVAL_RATE)

        outputs: dict[str, Any] = {"identity": lambda: degraded}
        match_db = loudness_gain_db(degraded, EVAL_RATE, clean_lufs)  # 0 dB for silence
        outputs["identity_loudness"] = lambda: degraded * np.float32(10.0 ** (match_db / 20.0))
        if truth:
            outputs["oracle_chain"] = lambda: self._oracle_chain(degraded, truth)
        outputs["oracle_mel_griffinlim"] = lambda: self._oracle_griffinlim(clean, degraded)
        # The forecast parameters come with the chain path: the Masterer runs the forecaster only
        # for the inversion that needs it.
        forecast: dict[str, np.ndarray] = {}
        for inversion in self.inversions:
            keep = forecast if inversion == "chain" else None
            outputs[inversion] = lambda inversion=inversion, keep=keep: self._master(inversion, degraded, keep)

        for name, render in outputs.items():
            try:
                audio = np.asarray(render(), dtype=np.float32)
                if not np.isfinite(audio).all():
                    raise FileError("NaN/Inf samples")
                result["paths"][name] = measure(audio, clean, clean_mel, clean_lufs, name in ALIGNED, self.audio_cfg)
            except (FileError, MasteringError, ValueError) as exc:  # this path only
                result["path_errors"][name] = f"{type(exc).__name__}: {exc}"
                log.warning("%s: path %s failed: %s", row["rel_path"], name, exc)
        if "params_norm" in forecast and truth:
            result["parameters"] = parameter_errors(forecast["params_norm"], truth)

    def _master(self, inversion: str, degraded: np.ndarray, forecast: dict | None) -> np.ndarray:
        mastered, info = self.masterer.master_audio(degraded, EVAL_RATE, inversion=inversion, images=forecast is not None)
        if forecast is not None and "params_norm" in info.get("arrays", {}):
            forecast["params_norm"] = info["arrays"]["params_norm"]
        return mastered

    def _oracle_chain(self, degraded: np.ndarray, truth: dict[str, Any]) -> np.ndarray:
        from automaster.effects.chain import invert_chain
        from automaster.effects.params import PARAMS, neutral_params

        n_frames = 1 + degraded.shape[-1] // self.audio_cfg.hop_length
        params = neutral_params(1, n_frames)
        for p in PARAMS:
            if p.name not in truth:
                continue  # unknown (foreign damage): neutral
            value = torch.as_tensor(np.asarray(truth[p.name], dtype=np.float32)).reshape(1, -1)  # (1, F) or (1, 1)
            if not p.per_frame:
                params[p.name] = value[:, 0]  # (1,)
            elif value.shape[-1] == 1:
                params[p.name] = value.expand(1, n_frames).clone()  # a constant trajectory
            else:
                params[p.name] = value
        with torch.inference_mode():
            return invert_chain(torch.from_numpy(degraded)[None], EVAL_RATE, params)[0].numpy()

    def _oracle_griffinlim(self, clean: np.ndarray, degraded: np.ndarray) -> np.ndarray:
        """Griffin-Lim from the clean mel with the griffinlim path's iterations, momentum, initial
        phase (the degraded input's, with ``init_phase``) and random-phase seed."""
        power_db = _mel_db(clean, self.audio_cfg)  # through dB, as the griffinlim path does (same floor)
        with torch.inference_mode():
            wave = griffinlim_audio(
                power_db, clean.shape[-1], self.audio_cfg, self.masterer.cfg, init_from=torch.from_numpy(degraded)
            )
        return wave.numpy()

def _summary_value(value: Any) -> float:
    """A per-clip value, or a trajectory's mean (for the record)."""
    return float(np.mean(np.asarray(value, dtype=np.float64)))


class EvaluateProcessor:
    """Ray Data callable class: loads the model once, evaluates one row (file) per call."""

    def __init__(self, model: str, inversions: list[str], settings: dict[str, Any], options: dict[str, Any], device: str = "cpu"):
        if device == "cpu":
            torch.set_num_threads(1)  # one file per CPU; parallelism comes from Ray
        self.evaluator = Evaluator(model, inversions, settings, options, device)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        result = self.evaluator.evaluate(row)
        # One JSON column: nested, partly-missing metrics do not fit Arrow's fixed schema.
        return {"rel_path": row["rel_path"], "status": result["status"], "result": json.dumps(result, default=_json_default)}


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
    return [
        {**r, "degraded_path": exact.get(r["rel_path"]) or by_stem.get(os.path.splitext(r["rel_path"])[0], "")} for r in rows
    ]


# ------------------------------------------------------------------------------- summary


def _stats(values: list[float | None]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": float(np.mean(vals)) if vals else None, "median": float(np.median(vals)) if vals else None, "n": len(vals)}


_FILE_KEYS = ("rel_path", "track_id", "path", "status", "reason", "seconds", "channels", "duration_s", "true_params_known")


def summarise(results: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``'s content from the per-file results."""
    from automaster.effects.params import BY_NAME, PARAMS

    results = sorted(results, key=lambda r: r["rel_path"])
    ok = [r for r in results if r["status"] == "ok"]
    failed = [r for r in results if r["status"] != "ok"]
    present = [p for p in PATHS if any(p in r["paths"] for r in ok)]
    paths: dict[str, Any] = {}
    for name in present:
        kind = "baseline" if name in BASELINES else "model"
        entry: dict[str, Any] = {"kind": kind, "description": DESCRIPTIONS[name], "metrics": {}}
        for metric in METRICS:
            per_file = {r["rel_path"]: r["paths"][name].get(metric) for r in ok if name in r["paths"]}
            if all(v is None for v in per_file.values()):
                continue  # does not apply to this path (SI-SDR of Griffin-Lim)
            entry["metrics"][metric] = {**_stats(list(per_file.values())), "per_file": per_file}
        entry["errors"] = {r["rel_path"]: r["path_errors"][name] for r in ok if name in r["path_errors"]}
        paths[name] = entry
    parameters: dict[str, Any] = {}
    for p in PARAMS:
        per_file = {r["rel_path"]: r["parameters"][p.name] for r in ok if p.name in r.get("parameters", {})}
        if not per_file:
            continue
        parameters[p.name] = {
            "unit": BY_NAME[p.name].unit,
            "abs_err": _stats([v["abs_err"] for v in per_file.values()]),
            "mid_range_abs_err": _stats([v["mid_range_abs_err"] for v in per_file.values()]),
            "per_file": per_file,
        }
    config = {**config, "n_files": len(results), "n_ok": len(ok), "n_failed": len(failed)}
    return {
        "config": config,
        "paths": paths,
        "parameters": parameters,
        "files": [{k: r.get(k) for k in _FILE_KEYS} for r in results],
        "failures": [{"rel_path": r["rel_path"], "path": r["path"], "reason": r["reason"]} for r in failed],
    }


def metrics_csv(results: list[dict[str, Any]]) -> str:
    """One row per file x path (failed files: one row with the reason)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rel_path", "track_id", "path", "status", "reason", *METRICS])
    for r in sorted(results, key=lambda r: r["rel_path"]):
        if r["status"] != "ok":
            writer.writerow([r["rel_path"], r["track_id"], "", r["status"], r["reason"], *[""] * len(METRICS)])
            continue
        for name in PATHS:
            if name in r["paths"]:
                values = r["paths"][name]
                cells = ["" if values.get(m) is None else f"{values[m]:.6g}" for m in METRICS]
                writer.writerow([r["rel_path"], r["track_id"], name, "ok", "", *cells])
            elif name in r["path_errors"]:
                writer.writerow([r["rel_path"], r["track_id"], name, "error", r["path_errors"][name], *[""] * len(METRICS)])
    return buf.getvalue()


def parameters_csv(results: list[dict[str, Any]]) -> str:
    """One row per file x known parameter: true, predicted (physical units) and errors."""
    from automaster.effects.params import BY_NAME

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rel_path", "track_id", "parameter", "unit", "true", "predicted", "abs_err", "mid_range_abs_err"])
    for r in sorted(results, key=lambda r: r["rel_path"]):
        for name, v in r.get("parameters", {}).items():
            cells = (f"{v[k]:.6g}" for k in ("true", "predicted", "abs_err", "mid_range_abs_err"))
            writer.writerow([r["rel_path"], r["track_id"], name, BY_NAME[name].unit, *cells])
    return buf.getvalue()


_HEADERS = {
    "si_sdr_db": "SI-SDR dB ↑", "mrstft": "MR-STFT ↓", "mel_l1_db": "mel L1 dB ↓", "loudness_err_lu": "|ΔLUFS| LU ↓",
    "true_peak_dbtp": "true peak dBTP",
}


def format_table(metrics: dict[str, Any]) -> str:
    """The means as a text table (paths x metrics), then the per-parameter forecast errors."""
    cfg = metrics["config"]
    lines = [
        f"evaluate: {cfg['n_ok']} files ok, {cfg['n_failed']} failed; degrader {cfg['degrader']}, seed {cfg['seed']}, "
        f"{cfg['clip_seconds']:g} s clips; model {cfg['model']} ({cfg.get('model_mode')})",
        "means over files (baselines: identity*, oracle_*; oracles know the clean signal or the true parameters)",
    ]
    width = max([len(p) for p in metrics["paths"]] + [4])
    cols = [_HEADERS[m] for m in METRICS]
    lines.append(f"{'path':<{width}}  " + "  ".join(f"{c:>14}" for c in cols))
    for name, entry in metrics["paths"].items():
        cells = []
        for m in METRICS:
            mean = entry["metrics"].get(m, {}).get("mean")
            cells.append(f"{'-' if mean is None else f'{mean:.3f}':>14}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    if metrics["parameters"]:
        lines.append("")
        lines.append(f"forecast error (mean |predicted - true|; known parameters: {cfg.get('true_params', '')})")
        pw = max(len(n) for n in metrics["parameters"])
        lines.append(f"{'parameter':<{pw}}  {'unit':>5}  {'model':>10}  {'mid-range':>10}")
        for name, entry in metrics["parameters"].items():
            model, mid = entry["abs_err"]["mean"], entry["mid_range_abs_err"]["mean"]
            lines.append(f"{name:<{pw}}  {entry['unit']:>5}  {model:>10.4g}  {mid:>10.4g}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the job


def supported_inversions(model: str, options: dict[str, Any], requested: list[str] | None) -> list[str]:
    """The inversions to run: ``requested`` (each must suit the model), or all the model can do.

    Raises:
        MasteringError: a requested inversion the model cannot do, or none it can.
        automaster.model.checkpoint.CheckpointError: the model cannot be loaded.
    """
    if requested:
        unknown = [i for i in requested if i not in INVERSIONS]
        if unknown:
            raise MasteringError(f"unknown inversion(s) {', '.join(unknown)}; choose from {', '.join(INVERSIONS)}")
        for inversion in requested:
            Masterer(model, inversion=inversion, **options)  # raises with the reason
        return list(dict.fromkeys(requested))
    usable = []
    for inversion in INVERSIONS:
        try:
            Masterer(model, inversion=inversion, **options)
        except MasteringError as exc:
            log.info("skipping inversion %s: %s", inversion, exc)
            continue
        usable.append(inversion)
    if not usable:
        raise MasteringError(f"the model at {model} can do none of {', '.join(INVERSIONS)}")
    return usable


def run_evaluate(
    model: str,
    clean: str,
    out: str,
    *,
    seed: int = 1,
    degrader: str = "ours",
    degraded_dir: str | None = None,
    inversions: list[str] | None = None,
    split: str | None = None,
    limit: int = 0,
    clip_seconds: float = 30.0,
    mono: bool = False,
    iterations: int = 32,
    init_phase: bool = False,
    target_lufs: float | None = None,
    true_peak_dbtp: float | None = None,
    echo_removal: bool = True,
    max_forecast_error: float | None = MAX_FORECAST_ERROR,
    peak_ceiling: float = 0.999,
    workers: int = 0,
    gpu: bool = False,
    tracking_uri: str | None = None,
    experiment: str = "automaster-evaluate",
    run_name: str | None = None,
    ray_address: str | None = None,
    progress_every_s: float = 10.0,
) -> dict[str, Any]:
    """Evaluate ``model`` on the clean files under ``clean``; returns ``metrics.json``'s content
    (also written to ``out`` with ``metrics.csv`` and ``parameters.csv``) plus the MLflow run id.

    Raises:
        MasteringError: bad inversions or options, ``gpu`` without a GPU.
        automaster.model.checkpoint.CheckpointError: the model cannot be loaded.
        automaster.corpus.CorpusError: no audio under ``clean``.
        ValueError: bad arguments (degrader, split, clip length).
    """
    import ray

    from automaster.pipelines import runtime, tracking

    if degraded_dir is not None:
        degrader = GIVEN
    elif degrader not in DEGRADERS:
        raise ValueError(f"degrader must be one of {', '.join(DEGRADERS)}, got {degrader!r}")
    if not (clip_seconds >= MIN_SECONDS):
        raise ValueError(f"clip_seconds must be >= {MIN_SECONDS:g}, got {clip_seconds}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    options = {
        "iterations": iterations, "init_phase": init_phase, "target_lufs": target_lufs, "true_peak_dbtp": true_peak_dbtp,
        "seed": seed, "chunk_s": max(30.0, clip_seconds), "echo_removal": echo_removal,
        "max_forecast_error": max_forecast_error,
    }
    # Fail before Ray when the checkpoint cannot do what is asked.
    inversions = supported_inversions(model, options, inversions)
    probe = Masterer(model, inversion=inversions[0], **options)
    model_settings = probe.settings()
    del probe
    if degrader == "pedalboard":
        from automaster.foreign import _pedalboard

        _pedalboard()  # a clear error now rather than one per file
    rows, listing = list_clean(clean, split, limit)
    if degraded_dir is not None:
        if not storage.is_dir(degraded_dir):
            raise FileNotFoundError(f"--degraded {degraded_dir!r} is not a folder")
        rows = match_degraded(rows, degraded_dir)
    settings = {"seed": seed, "degrader": degrader, "clip_seconds": clip_seconds, "mono": mono, "peak_ceiling": peak_ceiling}
    config = {
        "model": model, "model_mode": model_settings["model_mode"], "seed": seed, "degrader": degrader,
        "clean": clean, "degraded": degraded_dir, "corpus_kind": listing["kind"], "split": listing["split"], "limit": limit,
        "clip_seconds": clip_seconds, "mono": mono, "sample_rate": EVAL_RATE, "inversions": inversions,
        "iterations": iterations, "init_phase": init_phase, "momentum": model_settings["momentum"],
        "target_lufs": target_lufs, "true_peak_dbtp": true_peak_dbtp, "peak_ceiling": peak_ceiling,
        "echo_removal": echo_removal, "max_forecast_error": max_forecast_error,
        "true_params": {
            "ours": "all (our degrader records them)", "pedalboard": "mapped ones (automaster.foreign)", GIVEN: "none",
        }[degrader],
        "notes": {
            "identity_loudness": "oracle-level: gain-matched with the clean file's loudness",
            "oracle_chain": {
                "ours": "inverse chain with the true parameters",
                "pedalboard": "inverse chain with the mapped true parameters, the others neutral (approximate oracle)",
                GIVEN: "absent: true parameters unknown",
            }[degrader],
            "si_sdr_db": "waveform-aligned paths only (not Griffin-Lim)",
            "levels": "--target-lufs/--true-peak apply to the model paths only",
        },
    }
    storage.makedirs(out)
    log.info(
        "evaluate: %d files (%s %s, split %s), degrader %s, inversions %s",
        len(rows), listing["kind"], listing["root"], listing["split"], degrader, ",".join(inversions),
    )

    runtime.init_ray(ray_address)
    runtime.check_paths_visible({"--model": model, "--clean": clean, "--degraded": degraded_dir, "--out": out})
    if gpu and runtime.cluster_gpus() == 0:
        raise MasteringError("--gpu given but the Ray cluster has no GPU")
    workers = workers or (runtime.cluster_gpus() if gpu else runtime.cluster_cpus())
    config["workers"] = workers
    with tracking.start_run(experiment, run_name, tracking_uri, tags={"automaster.job": "evaluate"}) as run:
        tracking.log_params({k: v for k, v in config.items() if k != "notes"})
        results: list[dict[str, Any]] = []
        missing = [r for r in rows if degraded_dir is not None and not r["degraded_path"]]
        missing_names = {r["rel_path"] for r in missing}
        for r in missing:
            results.append({
                "track_id": r["track_id"], "rel_path": r["rel_path"], "path": r["path"], "status": "error",
                "reason": f"no degraded file for {r['rel_path']} under {degraded_dir}",
                "paths": {}, "path_errors": {}, "parameters": {},
            })
        todo = [r for r in rows if r["rel_path"] not in missing_names]
        if todo:
            resources = {"num_gpus": 1} if gpu else {"num_cpus": 1}
            ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 1000)).map(
                EvaluateProcessor,
                fn_constructor_kwargs={
                    "model": model, "inversions": inversions, "settings": settings, "options": options,
                    "device": "cuda" if gpu else "cpu",
                },
                compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(todo)))),
                **resources,
            )
            last = time.time()
            for row in ds.iter_rows():
                result = json.loads(row["result"])
                results.append(result)
                if result["status"] != "ok":
                    log.warning("%s: %s", result["rel_path"], result["reason"])
                if time.time() - last >= progress_every_s or len(results) == len(rows):
                    last = time.time()
                    n_failed = sum(r["status"] != "ok" for r in results)
                    log.info("evaluate: %d/%d files done (%d failed)", len(results), len(rows), n_failed)
        metrics = summarise(results, config)
        metrics["mlflow_run_id"] = run.info.run_id
        metrics["tracking_uri"] = tracking.resolve_tracking_uri(tracking_uri)
        files = {
            "metrics.json": json.dumps(metrics, indent=2, default=str).encode(),  # unsorted: baselines first
            "metrics.csv": metrics_csv(results).encode(),
            "parameters.csv": parameters_csv(results).encode(),
        }
        for name, data in files.items():
            storage.write_bytes_atomic(storage.join(out, name), data)
        _log_run(metrics, files)
    metrics["out"] = out
    return metrics


def _log_run(metrics: dict[str, Any], files: dict[str, bytes]) -> None:
    import mlflow

    from automaster.pipelines import tracking

    values = {"files_ok": metrics["config"]["n_ok"], "files_failed": metrics["config"]["n_failed"]}
    for name, entry in metrics["paths"].items():
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
