"""A mastering report per file: ``report/<file>.json`` and ``report/<file>.png``.

The JSON holds the levels in and out, each stage's record (:mod:`automaster.mastering.finishing`),
what the restoration measured (echo, level model; a forecast only when it is applied) and the
tone match; with pictures, also the curves the figure draws. The figure (on request; drawn with
PIL by :mod:`automaster.mastering.report_figure`) has one unit per axis and says which side is the
input and which the output:

1. long-term spectrum (mid, 1/3-octave smoothed) of the input, the output and the reference;
2. short-term loudness (3 s windows, BS.1770) over time, with the integrated levels and target;
3. true peak (8x oversampled, per 100 ms) over time, with the ceiling;
4. the limiter's gain reduction over time;
5. loudness after each stage (LUFS), the soft clipper a stage of its own;
6. true peak after each stage (dBTP), with the ceiling;
7. with a reference, the EQ applied to the mid and the side (dB).

The restoration's estimates are its caption. No panel uses a colour map, so none needs a colour bar.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from automaster import storage
from automaster.dsp import loudness as meter
from automaster.dsp.tone import GRID_HZ, ToneProfile, mid_spectrum_db, stereo_width_db, tone_error_db, tone_profile

REPORT_DIR = "report"
SHORT_TERM_S = 3.0  # EBU Tech 3341 short-term window
CURVE_HOP_S = 0.1  # loudness and peak curves: one value per 100 ms


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _json_list(x: np.ndarray, digits: int = 2) -> list[float | None]:
    return [_finite(round(float(v), digits)) for v in np.asarray(x, dtype=np.float64)]


def build_report(name: str, original: np.ndarray, output: np.ndarray, sample_rate: int,
                 finish_report: dict[str, Any], estimates: dict[str, Any] | None = None,
                 reference: ToneProfile | None = None, settings: dict[str, Any] | None = None,
                 curves: bool = True, levels: dict[str, Any] | None = None,
                 widths: tuple[float, float] | None = None, shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """The JSON-ready report of one file (the PNG is drawn from it by :func:`report_png`).

    Without ``curves`` it holds the figures only (levels, stages, estimates, widths, the tone
    match): what the mastering job writes by default, at the cost of a stereo-width sum. With
    them it adds the spectra, short-term loudness, true-peak and gain-reduction curves the
    picture draws. ``levels`` (:func:`automaster.mastering.finishing.levels_info`) saves
    measuring the input and output again; ``widths`` (in, out) and ``shape`` ``(C, T)`` stand in
    for the audio of a file mastered a block at a time (``original`` and ``output`` None, no curves).
    """
    sr = int(sample_rate)
    channels, frames = shape if shape is not None else np.atleast_2d(original).shape
    width_in, width_out = widths if widths is not None else (stereo_width_db(original), stereo_width_db(output))
    if levels is None:
        lufs_in, lufs_out = meter.integrated_loudness(original, sr), meter.integrated_loudness(output, sr)
        tp_in, tp_out = meter.true_peak_dbtp(original, sr), meter.true_peak_dbtp(output, sr)
    else:
        lufs_in, lufs_out = levels["lufs_before"], levels["lufs_after"]
        tp_in, tp_out = levels["true_peak_before_dbtp"], levels["true_peak_after_dbtp"]
    from automaster.mastering.finishing import GAIN_REDUCTION_HOP_S

    report: dict[str, Any] = {
        "file": storage.display(name), "sample_rate": sr, "channels": int(channels),
        "duration_s": round(frames / sr, 3), "settings": settings or {},
        "lufs_in": _finite(lufs_in), "lufs_out": _finite(lufs_out),
        "true_peak_in_dbtp": _finite(tp_in), "true_peak_out_dbtp": _finite(tp_out),
        "target_lufs": finish_report.get("target_lufs"), "ceiling_dbtp": finish_report.get("ceiling_dbtp"),
        "loudness_from": finish_report.get("loudness_from"),
        "loudness_gain_db": finish_report.get("loudness_gain_db"), "headroom_gain_db": finish_report.get("headroom_gain_db"),
        "soft_clip_drive_db": finish_report.get("soft_clip_drive_db"),
        "limiter_max_reduction_db": finish_report.get("limiter_max_reduction_db"), "amount": finish_report.get("amount"),
        "width_in_db": _finite(width_in), "width_out_db": _finite(width_out),
        "applied": finish_report.get("applied"),
        "stages": finish_report.get("stages", []), "estimates": estimates or {}, "tone": finish_report.get("tone"),
    }
    if not curves and reference is None:
        return report
    before = after = None
    if reference is not None:
        before, after = tone_profile(original, sr), tone_profile(output, sr)
        report["reference"] = {"lufs": _finite(reference.lufs), "width_db": _finite(reference.width_db),
                               "tone_error_in_db": _finite(tone_error_db(before, reference)),
                               "tone_error_out_db": _finite(tone_error_db(after, reference))}
    if not curves:
        return report
    t_in, st_in = meter.short_term_loudness(original, sr, SHORT_TERM_S, CURVE_HOP_S)
    _, st_out = meter.short_term_loudness(output, sr, SHORT_TERM_S, CURVE_HOP_S)
    tp_t, tp_curve_in = meter.true_peak_curve_dbtp(original, sr, CURVE_HOP_S)
    _, tp_curve_out = meter.true_peak_curve_dbtp(output, sr, CURVE_HOP_S)
    gr = np.asarray(finish_report.get("gain_reduction_db", np.zeros(0)), dtype=np.float64)
    # Without a reference only the mids are drawn: their spectra alone, not whole profiles.
    mid_in = before.mid_db if before is not None else mid_spectrum_db(original, sr)
    mid_out = after.mid_db if after is not None else mid_spectrum_db(output, sr)
    report.update({
        "spectrum": {"grid_hz": GRID_HZ.round(2).tolist(), "input_db": _json_list(mid_in), "output_db": _json_list(mid_out)},
        "short_term_lufs": {"time_s": _json_list(t_in, 2), "input": _json_list(st_in), "output": _json_list(st_out)},
        "true_peak_curve_dbtp": {"time_s": _json_list(tp_t, 2), "input": _json_list(tp_curve_in), "output": _json_list(tp_curve_out)},
        "gain_reduction_curve_db": {"hop_s": GAIN_REDUCTION_HOP_S, "values": _json_list(gr, 3)},
    })
    if reference is not None:
        # Drawn at the output's loudness: the tone is what should match, not the level.
        shift = after.lufs - reference.lufs if math.isfinite(after.lufs) and math.isfinite(reference.lufs) else 0.0
        report["spectrum"]["reference_db"] = _json_list(reference.mid_db + shift)
    return report


def estimates(info: dict[str, Any], param_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the restoration measured in one file, for the report: the echo stage's measurement
    (``echo_delay_s``, ``echo_gain``, whether it was removed, ``echo_feedback`` when it was
    undone as a feedback delay, ``echo_taps``: every echo undone, ``{delay_s, gain, feedback}``),
    the level model's estimate
    (``level_gain_db``, ``predicted_lufs``) and the reverb the chain applied (``reverb_rt60_s``,
    ``reverb_wet``, from :func:`automaster.mastering.policy.parameter_stats`) only when its wet
    share was forecast: a neutral default is not an estimate."""
    out: dict[str, Any] = {k: info[k] for k in ("echo_delay_s", "echo_gain") if info.get(k) is not None}
    if "echo_removed" in info:
        out["echo_removed"] = bool(info["echo_removed"])
    if info.get("echo_feedback"):  # undone as a feedback delay (a single echo has none)
        out["echo_feedback"] = float(info["echo_feedback"])
    if info.get("echo_taps"):  # every echo undone, the first as above
        out["echo_taps"] = [{k: float(v) for k, v in tap.items()} for tap in info["echo_taps"]]
    for k in ("level_gain_db", "predicted_lufs"):
        if info.get(k) is not None:
            out[k] = float(info[k])
    params = (param_stats or {}).get("params", {})
    if params.get("reverb_wet", {}).get("source", "forecast") == "forecast":
        for name in ("reverb_rt60_s", "reverb_wet"):
            p = params.get(name)
            if p is not None and p.get("applied") is not None:
                out[name] = p["applied"]
    return out


def _estimates_line(r: dict[str, Any]) -> str:
    """What the restoration measured, in words and units (a caption: values of different units
    are not drawn on one axis)."""
    e = r.get("estimates", {})
    parts = []
    if e.get("echo_delay_s") is not None:
        removed = "removed" if e.get("echo_removed") else "left (below the echo stage's threshold or not confirmed)"
        feedback = f", feedback {e['echo_feedback']:.2f}" if e.get("echo_feedback") else ""
        parts.append(f"echo measured at {e['echo_delay_s'] * 1e3:.0f} ms, gain {e.get('echo_gain') or 0:.2f}{feedback}: {removed}")
        parts += [f"then echo at {t['delay_s'] * 1e3:.0f} ms, gain {t['gain']:.2f}: removed" for t in e.get("echo_taps", [])[1:]]
    if e.get("level_gain_db") is not None:
        parts.append(f"level model: the original master {e['level_gain_db']:+.1f} dB from the input"
                     + (f" ({e['predicted_lufs']:.1f} LUFS)" if e.get("predicted_lufs") is not None else ""))
    if e.get("reverb_rt60_s") is not None:
        parts.append(f"reverb forecast: RT60 {e['reverb_rt60_s']:.2f} s, wet {e.get('reverb_wet', 0):.2f}")
    return "; ".join(parts) or "no echo, level or reverb estimate"


def report_png(report: dict[str, Any]) -> bytes:
    """The report's figure as PNG bytes (:func:`automaster.mastering.report_figure.draw_report`):
    spectrum, short-term loudness, true peak, the limiter's gain reduction, loudness and true
    peak after each stage, and with a reference the EQ it applied; every axis in one unit, the
    input in blue and the output in orange; the restoration's estimates in the caption."""
    from automaster.mastering.report_figure import draw_report  # PIL: loaded when a picture is asked for

    return draw_report(report, _estimates_line(report))


def report_json(report: dict[str, Any]) -> bytes:
    """The report as JSON bytes (no NaN: missing values are null)."""
    return json.dumps(report, indent=1, allow_nan=False).encode()


def report_files(out_rel: str, report: dict[str, Any], png: bool = True) -> dict[str, bytes]:
    """``{"report/<out_rel>.json": ..., "report/<out_rel>.png": ...}`` (the PNG with ``png``):
    the files to write under the job's output folder (staged like its other outputs)."""
    files = {f"{REPORT_DIR}/{out_rel}.json": report_json(report)}
    if png:
        files[f"{REPORT_DIR}/{out_rel}.png"] = report_png(report)
    return files
