"""The evaluation's outputs from per-file results: ``metrics.json``'s content (per evaluated
inversion, baselines first: mean/median/per-file values; per-parameter forecast errors;
failures), ``metrics.csv`` (file x inversion), ``parameters.csv`` (file x parameter) and a text
table of the means."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from automaster import storage
from automaster.config import INVERSIONS
from automaster.effects.params import BY_NAME, PARAMS
from automaster.evaluation.baselines import BASELINES
from automaster.evaluation.baselines import DESCRIPTIONS as BASELINE_DESCRIPTIONS
from automaster.evaluation.metrics import METRICS

EVALUATED = BASELINES + INVERSIONS  # every inversion an evaluation reports, baselines first
DESCRIPTIONS = {
    **BASELINE_DESCRIPTIONS,
    "chain": "model: forecast parameters drive the inverse chain",
    "mask": "model: U-Net mel gain on the input STFT",
    "griffinlim": "model: restored mel through Griffin-Lim",
}
def _stats(values: list[float | None]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": float(np.mean(vals)) if vals else None, "median": float(np.median(vals)) if vals else None, "n": len(vals)}


_FILE_KEYS = ("rel_path", "track_id", "path", "status", "reason", "seconds", "channels", "duration_s", "true_params_known")


def summarise(results: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``'s content from the per-file results."""
    results = sorted(results, key=lambda r: r["rel_path"])
    ok = [r for r in results if r["status"] == "ok"]
    failed = [r for r in results if r["status"] != "ok"]
    present = [name for name in EVALUATED if any(name in r["inversions"] for r in ok)]
    inversions: dict[str, Any] = {}
    for name in present:
        kind = "baseline" if name in BASELINES else "model"
        entry: dict[str, Any] = {"kind": kind, "description": DESCRIPTIONS[name], "metrics": {}}
        for metric in METRICS:
            per_file = {r["rel_path"]: r["inversions"][name].get(metric) for r in ok if name in r["inversions"]}
            if all(v is None for v in per_file.values()):
                continue  # does not apply to this inversion (SI-SDR of Griffin-Lim)
            entry["metrics"][metric] = {**_stats(list(per_file.values())), "per_file": per_file}
        entry["errors"] = {r["rel_path"]: r["inversion_errors"][name] for r in ok if name in r["inversion_errors"]}
        entry["notes"] = {r["rel_path"]: r["inversion_notes"][name] for r in ok if name in r.get("inversion_notes", {})}
        inversions[name] = entry
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
        "inversions": inversions,
        "parameters": parameters,
        "files": [{k: r.get(k) for k in _FILE_KEYS} for r in results],
        "failures": [{"rel_path": r["rel_path"], "path": r["path"], "reason": r["reason"]} for r in failed],
    }


def metrics_csv(results: list[dict[str, Any]]) -> str:
    """One row per file x inversion (failed files: one row with the reason; an inversion's
    error, or the loudness stage's note beside its figures, in ``reason``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rel_path", "track_id", "inversion", "status", "reason", *METRICS])
    for r in sorted(results, key=lambda r: r["rel_path"]):
        if r["status"] != "ok":
            writer.writerow([r["rel_path"], r["track_id"], "", r["status"], r["reason"], *[""] * len(METRICS)])
            continue
        for name in EVALUATED:
            if name in r["inversions"]:
                values = r["inversions"][name]
                cells = ["" if values.get(m) is None else f"{values[m]:.6g}" for m in METRICS]
                writer.writerow([r["rel_path"], r["track_id"], name, "ok", r.get("inversion_notes", {}).get(name, ""), *cells])
            elif name in r["inversion_errors"]:
                writer.writerow([r["rel_path"], r["track_id"], name, "error", r["inversion_errors"][name], *[""] * len(METRICS)])
    return buf.getvalue()


def parameters_csv(results: list[dict[str, Any]]) -> str:
    """One row per file x known parameter: true, predicted (physical units) and errors."""
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
    """The means as a text table (inversions x metrics), then the per-parameter forecast errors."""
    cfg = metrics["config"]
    lines = [
        f"evaluate: {cfg['n_ok']} files ok, {cfg['n_failed']} failed; degrader {cfg['degrader']}, seed {cfg['seed']}, "
        f"{cfg['clip_seconds']:g} s clips; model {cfg['model']} ({cfg.get('model_mode')})",
        "means over files (baselines: identity*, normalised, oracle_*; oracles know the clean signal or the true parameters)",
    ]
    width = max([len(name) for name in metrics["inversions"]] + [9])
    cols = [_HEADERS[m] for m in METRICS]
    lines.append(f"{'inversion':<{width}}  " + "  ".join(f"{c:>14}" for c in cols))
    for name, entry in metrics["inversions"].items():
        cells = []
        for m in METRICS:
            mean = entry["metrics"].get(m, {}).get("mean")
            cells.append(f"{'-' if mean is None else f'{mean:.3f}':>14}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    for name, entry in metrics["inversions"].items():
        if entry.get("notes"):  # e.g. a near-silent input whose loudness gain was refused
            (first, note), more = next(iter(entry["notes"].items())), len(entry["notes"]) - 1
            lines.append(f"note: {name} on {storage.display_name(first)}: {note}" + (f" (and {more} more files; metrics.csv)" if more else ""))
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
