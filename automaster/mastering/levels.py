"""The levels stage after the inversion: optional loudness target and true-peak ceiling, and the
no-clipping rule: a result still peaking above 0 dBFS (no ceiling, or one above 0 dBTP) gets a
static gain to a sample peak of :data:`HEADROOM_PEAK_DBFS`, recorded as ``headroom_gain_db``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from automaster.dsp import loudness
from automaster.dsp.limiter import master_loudness

# A result peaking above full scale is brought to this sample peak (dBFS) before it is written.
HEADROOM_PEAK_DBFS = -0.1


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, ``None`` for ``None``/NaN/Inf (JSON- and summary-safe)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def abs_max(audio: np.ndarray) -> float:
    """``max |audio|`` without a temporary the size of the audio."""
    return max(float(audio.max()), -float(audio.min())) if audio.size else 0.0


def all_finite(audio: np.ndarray) -> bool:
    """No NaN/Inf (max and min propagate them), without a full-size boolean temporary."""
    return not audio.size or (math.isfinite(float(audio.max())) and math.isfinite(float(audio.min())))


def peak_dbfs(audio: np.ndarray) -> float | None:
    """Sample peak in dBFS (``None`` for digital silence)."""
    peak = abs_max(audio)
    return 20.0 * math.log10(peak) if peak > 0 else None


def apply_levels(
    original: np.ndarray, mastered: np.ndarray, sr: int, target_lufs: float | None, true_peak_dbtp: float | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Loudness/true-peak stage and the no-clipping rule on ``mastered`` ``(C, T)``; returns it with
    the levels of ``original`` (before) and of the result (after) and the gains applied."""
    info: dict[str, Any] = {
        "lufs_before": finite_or_none(loudness.integrated_loudness(original, sr)),
        "lufs_after": None,
        "true_peak_before_dbtp": finite_or_none(loudness.true_peak_dbtp(original, sr)),
        "true_peak_after_dbtp": None, "loudness_gain_db": 0.0, "headroom_gain_db": 0.0,
        "limiter_max_reduction_db": 0.0, "limiter_mean_reduction_db": 0.0, "loudness_note": "",
        "peak_before_dbfs": peak_dbfs(original),
    }
    after: tuple[float, float] | None = None  # (LUFS, dBTP) of `mastered` as it stands, once known
    mastered = np.ascontiguousarray(mastered, dtype=np.float32)
    if target_lufs is not None or true_peak_dbtp is not None:
        # master_loudness passes silence (below the gate) through without a loudness gain.
        mastered, stats = master_loudness(mastered, sr, target_lufs, true_peak_dbtp)
        mastered = np.ascontiguousarray(mastered, dtype=np.float32)
        if target_lufs is not None and finite_or_none(stats["lufs_before"]) is None:
            info["loudness_note"] = "silent: loudness target not applied"
        info["loudness_gain_db"] = finite_or_none(stats.get("gain_db")) or 0.0
        info["limiter_max_reduction_db"] = stats["limiter_max_reduction_db"]
        info["limiter_mean_reduction_db"] = stats["limiter_mean_reduction_db"]
        after = (stats["lufs_after"], stats["true_peak_after_dbtp"])
    peak = abs_max(mastered)
    if peak > 1.0:
        gain = 10.0 ** (HEADROOM_PEAK_DBFS / 20.0) / peak
        mastered = mastered * np.float32(gain)
        info["headroom_gain_db"] = 20.0 * math.log10(gain)
        after = None  # re-measured: the gate may see the quieter blocks differently
    info["peak_after_dbfs"] = peak_dbfs(mastered)
    if after is None:
        after = (loudness.integrated_loudness(mastered, sr), loudness.true_peak_dbtp(mastered, sr))
    info["lufs_after"] = finite_or_none(after[0])
    info["true_peak_after_dbtp"] = finite_or_none(after[1])
    return mastered, info
