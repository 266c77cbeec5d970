"""One picture for a whole master job: every file's loudness in and out, true peak and gain.

Three panels sharing one x axis, the input's integrated loudness (LUFS), so they read the same for
three files or three thousand: the output's loudness (LUFS), its true peak (dBTP) with the
ceiling, and the loudness stage's gain (dB). One unit per axis; points, not a colour map.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def _values(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)


def overview_png(rows: list[dict[str, Any]]) -> bytes:
    """The overview of ``rows`` (the summary's files: ``lufs_before``, ``lufs_after``,
    ``true_peak_after_dbtp``, ``loudness_gain_db``, ``target_lufs``, ``ceiling_dbtp``) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    lufs_in, lufs_out = _values(rows, "lufs_before"), _values(rows, "lufs_after")
    peak_out, gain = _values(rows, "true_peak_after_dbtp"), _values(rows, "loudness_gain_db")
    fig = Figure(figsize=(13, 4), dpi=72, layout="constrained")
    ax_lufs, ax_peak, ax_gain = fig.subplots(1, 3, sharex=True)
    size = 30 if len(rows) <= 200 else 8
    ax_lufs.scatter(lufs_in, lufs_out, s=size, color="tab:orange", label="output")
    finite = np.concatenate([lufs_in[np.isfinite(lufs_in)], lufs_out[np.isfinite(lufs_out)]])
    if finite.size:
        lo, hi = float(finite.min()) - 1.0, float(finite.max()) + 1.0
        ax_lufs.plot([lo, hi], [lo, hi], color="gray", linestyle=":", label="unchanged (output = input)")
    targets = {r.get("target_lufs") for r in rows if r.get("target_lufs") is not None}
    if len(targets) == 1:
        ax_lufs.axhline(targets.pop(), color="black", linestyle="--", label="target")
    ax_lufs.set(title="Loudness: input -> output", ylabel="output loudness (LUFS)")
    ax_peak.scatter(lufs_in, peak_out, s=size, color="tab:red", label="output true peak")
    ceilings = {r.get("ceiling_dbtp") for r in rows if r.get("ceiling_dbtp") is not None}
    for c in ceilings:
        ax_peak.axhline(c, color="black", linestyle="--", label=f"ceiling {c:g} dBTP")
    ax_peak.set(title="True peak of the output (8x oversampled)", ylabel="output true peak (dBTP)")
    ax_gain.scatter(lufs_in, gain, s=size, color="tab:green", label="loudness stage gain")
    ax_gain.axhline(0.0, color="gray", linestyle=":")
    ax_gain.set(title="Gain applied by the loudness stage", ylabel="gain (dB)")
    for ax in (ax_lufs, ax_peak, ax_gain):
        ax.set_xlabel("input loudness (LUFS)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{len(rows)} files mastered")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
