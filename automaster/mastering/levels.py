"""Level helpers of the stages after restoration (:mod:`.finishing`): finite-or-None numbers, peaks,
and the no-clipping rule's level: a result still peaking above 0 dBFS (no ceiling, or one above
0 dBTP) gets a static gain to a sample peak of :data:`HEADROOM_PEAK_DBFS`."""

from __future__ import annotations

import math

import numpy as np

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
