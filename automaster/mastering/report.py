"""A mastering report per file: ``report/<file>.json`` and ``report/<file>.png``.

The JSON holds the levels in and out, each stage's record (:mod:`automaster.mastering.finishing`), the
echo and reverb estimates, the tone match, and the curves the figure draws. The PNG has six
panels, each with its axes in units and input/output labels:

1. long-term spectrum (mid, 1/3-octave smoothed) of the input, the output and the reference;
2. short-term loudness (3 s windows, BS.1770) over time, with the integrated levels and target;
3. true peak (4x oversampled, per 100 ms) over time, with the ceiling;
4. the limiter's gain reduction over time;
5. the echo and reverb estimates (what was measured and what was applied);
6. loudness and true peak after each stage.

No panel uses a colour map, so none needs a colour bar.
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
                 curves: bool = True, levels: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready report of one file (the PNG is drawn from it by :func:`report_png`).

    Without ``curves`` it holds the figures only (levels, stages, estimates, widths, the tone
    match): what the mastering job writes by default, at the cost of a stereo-width sum. With
    them it adds the spectra, short-term loudness, true-peak and gain-reduction curves the
    picture draws. ``levels`` (:func:`automaster.mastering.finishing.levels_info`) saves
    measuring the input and output again.
    """
    sr = int(sample_rate)
    x = np.atleast_2d(original)
    if levels is None:
        lufs_in, lufs_out = meter.integrated_loudness(original, sr), meter.integrated_loudness(output, sr)
        tp_in, tp_out = meter.true_peak_dbtp(original, sr), meter.true_peak_dbtp(output, sr)
    else:
        lufs_in, lufs_out = levels["lufs_before"], levels["lufs_after"]
        tp_in, tp_out = levels["true_peak_before_dbtp"], levels["true_peak_after_dbtp"]
    from automaster.mastering.finishing import GAIN_REDUCTION_HOP_S

    report: dict[str, Any] = {
        "file": storage.display(name), "sample_rate": sr, "channels": int(x.shape[0]),
        "duration_s": round(x.shape[-1] / sr, 3), "settings": settings or {},
        "lufs_in": _finite(lufs_in), "lufs_out": _finite(lufs_out),
        "true_peak_in_dbtp": _finite(tp_in), "true_peak_out_dbtp": _finite(tp_out),
        "target_lufs": finish_report.get("target_lufs"), "ceiling_dbtp": finish_report.get("ceiling_dbtp"),
        "loudness_from": finish_report.get("loudness_from"),
        "loudness_gain_db": finish_report.get("loudness_gain_db"), "headroom_gain_db": finish_report.get("headroom_gain_db"),
        "soft_clip_drive_db": finish_report.get("soft_clip_drive_db"),
        "limiter_max_reduction_db": finish_report.get("limiter_max_reduction_db"), "amount": finish_report.get("amount"),
        "width_in_db": _finite(stereo_width_db(original)), "width_out_db": _finite(stereo_width_db(output)),
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


def _plot_estimates(ax, r: dict[str, Any]) -> None:
    items = [(k, v) for k, v in r.get("estimates", {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not items:
        ax.text(0.5, 0.5, "no echo or reverb estimates", ha="center", va="center", transform=ax.transAxes)
    else:
        labels, values = zip(*items)
        ax.barh(range(len(values)), values, color="tab:purple")
        ax.set_yticks(range(len(values)), labels)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3g}", va="center")
    ax.set(title="Echo and reverb estimates (input)", xlabel="value (unit in each name: s, x = linear)")


def _plot_stages(ax, r: dict[str, Any]) -> None:
    stages = r.get("stages", [])
    names = [("* " if s["applied"] else "") + s["stage"] for s in stages]
    x = np.arange(len(stages))
    lufs = _arr([s.get("lufs") for s in stages], FLOOR_LUFS)
    peaks = _arr([s.get("true_peak_dbtp") for s in stages], -100.0)
    ax.bar(x - 0.2, lufs, 0.4, label="loudness (LUFS)", color="tab:green")
    ax.bar(x + 0.2, peaks, 0.4, label="true peak (dBTP)", color="tab:gray")
    ax.set_xticks(x, names, rotation=20)
    ax.set(title="After each stage (* = applied)", xlabel="stage (input -> output)", ylabel="level (LUFS / dBTP)")


def report_png(report: dict[str, Any]) -> bytes:
    """The six-panel figure of :func:`build_report`'s report, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 9), dpi=80, layout="constrained")
    axes = fig.subplots(2, 3)
    for ax, draw in zip(axes.flat, (_plot_spectrum, _plot_loudness, _plot_peaks, _plot_gain_reduction, _plot_estimates, _plot_stages)):
        draw(ax, report)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{report['file']}: {_fmt(report.get('lufs_in'))} -> {_fmt(report.get('lufs_out'))} LUFS, "
                 f"true peak {_fmt(report.get('true_peak_out_dbtp'))} dBTP")
    buf = io.BytesIO()
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
