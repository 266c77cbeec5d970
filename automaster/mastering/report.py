"""A mastering report per file: ``report/<file>.json`` and ``report/<file>.png``.

The JSON holds the levels in and out, each stage's record (:mod:`automaster.mastering.finishing`),
what the restoration measured (echo, level model; a forecast only when it is applied) and the
tone match; with pictures, also the curves the figure draws. The figure (on request: it costs
more than the mastering) has one unit per axis and says which side is the input and which the
output:

1. long-term spectrum (mid, 1/3-octave smoothed) of the input, the output and the reference;
2. short-term loudness (3 s windows, BS.1770) over time, with the integrated levels and target;
3. true peak (4x oversampled, per 100 ms) over time, with the ceiling;
4. the limiter's gain reduction over time;
5. loudness after each stage (LUFS), the soft clipper a stage of its own;
6. true peak after each stage (dBTP), with the ceiling;
7. with a reference, the EQ applied to the mid and the side (dB).

The restoration's estimates are its caption. No panel uses a colour map, so none needs a colour bar.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np

from automaster import storage
from automaster.dsp import loudness as meter
from automaster.dsp.tone import GRID_HZ, ToneProfile, stereo_width_db, tone_error_db, tone_profile

REPORT_DIR = "report"
SHORT_TERM_S = 3.0  # EBU Tech 3341 short-term window
CURVE_HOP_S = 0.1  # loudness and peak curves: one value per 100 ms
FLOOR_LUFS = -70.0  # short-term values below the absolute gate are drawn at this level


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _json_list(x: np.ndarray, digits: int = 2) -> list[float | None]:
    return [_finite(round(float(v), digits)) for v in np.asarray(x, dtype=np.float64)]


def peak_curve_dbtp(audio: np.ndarray, sample_rate: int, hop_s: float = CURVE_HOP_S) -> tuple[np.ndarray, np.ndarray]:
    """``(times_s, dBTP)``: the 4x-oversampled peak of each ``hop_s`` window (all channels)."""
    import scipy.signal  # the curves are drawn on request only: not loaded at import

    x = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    factor = meter.oversampling_factor(sample_rate)
    up = scipy.signal.resample_poly(x, factor, 1, axis=-1) if factor > 1 else x
    env = np.abs(up).max(axis=0)
    hop = max(1, int(round(hop_s * sample_rate))) * factor
    n = max(1, env.size // hop)
    peaks = np.array([env[i * hop : (i + 1) * hop].max(initial=0.0) for i in range(n)])
    with np.errstate(divide="ignore"):
        return (np.arange(n) + 0.5) * hop / factor / sample_rate, 20.0 * np.log10(peaks)


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
    before, after = tone_profile(original, sr), tone_profile(output, sr)
    if reference is not None:
        report["reference"] = {"lufs": _finite(reference.lufs), "width_db": _finite(reference.width_db),
                               "tone_error_in_db": _finite(tone_error_db(before, reference)),
                               "tone_error_out_db": _finite(tone_error_db(after, reference))}
    if not curves:
        return report
    t_in, st_in = meter.short_term_loudness(original, sr, SHORT_TERM_S, CURVE_HOP_S)
    _, st_out = meter.short_term_loudness(output, sr, SHORT_TERM_S, CURVE_HOP_S)
    tp_t, tp_curve_in = peak_curve_dbtp(original, sr)
    _, tp_curve_out = peak_curve_dbtp(output, sr)
    gr = np.asarray(finish_report.get("gain_reduction_db", np.zeros(0)), dtype=np.float64)
    report.update({
        "spectrum": {"grid_hz": GRID_HZ.round(2).tolist(), "input_db": _json_list(before.mid_db),
                     "output_db": _json_list(after.mid_db)},
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
    (``echo_delay_s``, ``echo_gain``, whether it was removed), the level model's estimate
    (``level_gain_db``, ``predicted_lufs``) and the reverb the chain applied (``reverb_rt60_s``,
    ``reverb_wet``, from :func:`automaster.mastering.policy.parameter_stats`) only when its wet
    share was forecast: a neutral default is not an estimate."""
    out: dict[str, Any] = {k: info[k] for k in ("echo_delay_s", "echo_gain") if info.get(k) is not None}
    if "echo_removed" in info:
        out["echo_removed"] = bool(info["echo_removed"])
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


def _arr(values: list[float | None], floor: float = float("nan")) -> np.ndarray:
    return np.array([floor if v is None else v for v in values], dtype=np.float64)


def _plot_spectrum(ax, r: dict[str, Any]) -> None:
    s = r["spectrum"]
    f = np.asarray(s["grid_hz"])
    ax.semilogx(f, _arr(s["input_db"]), label="input", color="tab:blue")
    ax.semilogx(f, _arr(s["output_db"]), label="output", color="tab:orange")
    if "reference_db" in s:
        ax.semilogx(f, _arr(s["reference_db"]), label="reference (at the output's loudness)", color="tab:green", linestyle="--")
    ax.set(title="Long-term spectrum (mid, 1/3-octave smoothed)", xlabel="frequency (Hz)", ylabel="power density (dBFS/Hz)", xlim=(20, 20000))


def _plot_loudness(ax, r: dict[str, Any]) -> None:
    c = r["short_term_lufs"]
    t = _arr(c["time_s"])
    ax.plot(t, _arr(c["input"], FLOOR_LUFS), label="input, short-term", color="tab:blue")
    ax.plot(t, _arr(c["output"], FLOOR_LUFS), label="output, short-term", color="tab:orange")
    for key, colour, label in (("lufs_in", "tab:blue", "input, integrated"), ("lufs_out", "tab:orange", "output, integrated")):
        if r.get(key) is not None:
            ax.axhline(r[key], color=colour, linestyle=":", label=f"{label} {r[key]:.1f} LUFS")
    if r.get("target_lufs") is not None:
        ax.axhline(r["target_lufs"], color="black", linestyle="--", label=f"target {r['target_lufs']:.1f} LUFS")
    ax.set(title="Loudness (3 s short-term, BS.1770)", xlabel="time (s)", ylabel="loudness (LUFS)")


def _plot_peaks(ax, r: dict[str, Any]) -> None:
    c = r["true_peak_curve_dbtp"]
    t = _arr(c["time_s"])
    ax.plot(t, _arr(c["input"], -100.0), label="input", color="tab:blue")
    ax.plot(t, _arr(c["output"], -100.0), label="output", color="tab:orange")
    if r.get("ceiling_dbtp") is not None:
        ax.axhline(r["ceiling_dbtp"], color="red", linestyle="--", label=f"ceiling {r['ceiling_dbtp']:.1f} dBTP")
    ax.set(title="True peak per 100 ms (4x oversampled)", xlabel="time (s)", ylabel="true peak (dBTP)")


def _plot_gain_reduction(ax, r: dict[str, Any]) -> None:
    c = r["gain_reduction_curve_db"]
    gr = _arr(c["values"], 0.0)
    ax.plot(np.arange(gr.size) * c["hop_s"], gr, color="tab:red", label="output: limiter gain")
    ax.set(title=f"Limiter gain reduction (max {r.get('limiter_max_reduction_db') or 0.0:.2f} dB)",
           xlabel="time (s)", ylabel="gain (dB)", ylim=(min(-1.0, float(gr.min(initial=0.0)) - 0.5), 0.5))


def _estimates_line(r: dict[str, Any]) -> str:
    """What the restoration measured, in words and units (a caption: values of different units
    are not drawn on one axis)."""
    e = r.get("estimates", {})
    parts = []
    if e.get("echo_delay_s") is not None:
        removed = "removed" if e.get("echo_removed") else "left (below the echo stage's threshold or not confirmed)"
        parts.append(f"echo measured at {e['echo_delay_s'] * 1e3:.0f} ms, gain {e.get('echo_gain') or 0:.2f}: {removed}")
    if e.get("level_gain_db") is not None:
        parts.append(f"level model: the original master {e['level_gain_db']:+.1f} dB from the input"
                     + (f" ({e['predicted_lufs']:.1f} LUFS)" if e.get("predicted_lufs") is not None else ""))
    if e.get("reverb_rt60_s") is not None:
        parts.append(f"reverb forecast: RT60 {e['reverb_rt60_s']:.2f} s, wet {e.get('reverb_wet', 0):.2f}")
    return "; ".join(parts) or "no echo, level or reverb estimate"


def _plot_stage_levels(ax, r: dict[str, Any], key: str, unit: str, floor: float, title: str, line: float | None = None) -> None:
    stages = r.get("stages", [])
    names = [("* " if s["applied"] else "") + s["stage"] for s in stages]
    values = _arr([s.get(key) for s in stages], floor)
    ax.plot(np.arange(len(stages)), values, marker="o", color="tab:green" if unit == "LUFS" else "tab:gray")
    if line is not None:
        ax.axhline(line, color="red" if unit == "dBTP" else "black", linestyle="--")
    ax.set_xticks(np.arange(len(stages)), names, rotation=25, fontsize=8)
    ax.set(title=title, xlabel="stage, input -> output (* = applied)", ylabel=f"{'loudness' if unit == 'LUFS' else 'true peak'} ({unit})")


def _plot_eq(ax, r: dict[str, Any]) -> None:
    tone = r.get("tone") or {}
    f = np.asarray(tone.get("eq_hz") or [], dtype=np.float64)
    if f.size == 0:
        ax.text(0.5, 0.5, "no reference: no tone-matching EQ", ha="center", va="center", transform=ax.transAxes)
        ax.set(title="Reference EQ (applied)", xlabel="frequency (Hz)", ylabel="gain (dB)")
        return
    ax.semilogx(f, _arr(tone.get("eq_mid_db") or []), color="tab:blue", label="mid")
    ax.semilogx(f, _arr(tone.get("eq_side_db") or []), color="tab:purple", label="side")
    ax.axhline(0.0, color="gray", linestyle=":")
    ax.set(title="Reference EQ applied to the input (mid, side)", xlabel="frequency (Hz)", ylabel="gain (dB)", xlim=(20, 20000))


def report_png(report: dict[str, Any]) -> bytes:
    """The report's figure as PNG bytes: spectrum, short-term loudness, true peak, the limiter's
    gain reduction, loudness and true peak after each stage, and with a reference the EQ it
    applied; every axis in one unit, the input in blue and the output in orange; the
    restoration's estimates in the caption. Drawn with Agg and no layout engine (about 0.2 s)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from cycler import cycler

    r = report
    fig = Figure(figsize=(18, 11), dpi=56)
    with matplotlib.rc_context({"axes.prop_cycle": cycler(color=["black"])}):  # every line has its colour; the
        axes = fig.subplots(2, 4 if r.get("tone") else 3)  # default 10-colour cycle costs 0.1 s to build per figure
    draws = [_plot_spectrum, _plot_loudness, _plot_peaks, _plot_gain_reduction,
             lambda ax, r: _plot_stage_levels(ax, r, "lufs", "LUFS", FLOOR_LUFS, "Loudness after each stage", r.get("target_lufs")),
             lambda ax, r: _plot_stage_levels(ax, r, "true_peak_dbtp", "dBTP", -100.0, "True peak after each stage", r.get("ceiling_dbtp"))]
    if r.get("tone"):
        draws.insert(3, _plot_eq)
        draws.append(lambda ax, r: ax.set_axis_off())
    from matplotlib.ticker import MaxNLocator

    for ax, draw in zip(axes.flat, draws):
        draw(ax, r)
        ax.minorticks_off()  # ticks are most of the figure's cost: a few major ones per axis
        ax.yaxis.set_major_locator(MaxNLocator(5))
        if draw in (_plot_loudness, _plot_peaks, _plot_gain_reduction):  # time axes; stages keep their names
            ax.xaxis.set_major_locator(MaxNLocator(6))
        if ax.axison:
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(f"{r['file']}: {_fmt(r.get('lufs_in'))} -> {_fmt(r.get('lufs_out'))} LUFS, true peak "
                 f"{_fmt(r.get('true_peak_in_dbtp'))} -> {_fmt(r.get('true_peak_out_dbtp'))} dBTP; {r.get('applied') or ''}\n"
                 f"{_estimates_line(r)}", fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.89, bottom=0.1, wspace=0.28, hspace=0.45)
    buf = io.BytesIO()
    import warnings

    with warnings.catch_warnings():  # a file name's glyph the font lacks is drawn as a box, not a console warning
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig.savefig(buf, format="png")
    return buf.getvalue()


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


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)
