"""The last mastering stages: a look-ahead true-peak limiter and the loudness-target stage.

Audio as in :mod:`automaster.dsp.loudness` (``(C, T)`` or ``(T,)``, numpy or torch; numpy comes
back in the input's float dtype). The limiter's gain is linked across channels and works on the
required reduction in dB; it reports what it took off (:class:`GainReduction`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch

from automaster.dsp.loudness import (
    _PEAK_BLOCK, _as_channels_first, _block_mean_squares, _channel_weights, _check_rate, _gain_bound, _gate,
    _loudness, _peak_bounds, _peak_segments, _taps_for, _true_peak_linear,
)

LIMITER_HOLD_MS = 0.5  # gain held flat around each peak: covers the interpolation kernel's main lobe
RELEASE_SNAP_DB = 1e-6  # reductions below this are exactly 0 dB (gain exactly 1, no tail)
LIMITER_MARGIN_DB = 1e-3  # aim this far below the ceiling: absorbs inter-sample residuals, stays above the snap
LIMITER_MAX_PASSES = 3
MASTER_LOUDNESS_AIM_LU = 0.1  # master_loudness stops correcting once this close to the target
MASTER_MAX_PASSES = 3  # corrective passes after the first
MASTER_MAX_EXTRA_GAIN_DB = 12.0  # corrective gain allowed on top of plain normalisation
# The most gain master_loudness applies: a target further away than this (a quiet recording asked
# for a loud preset, a typo) would mostly drive the limiter; the file stays at +24 dB instead.
MASTER_MAX_GAIN_DB = 24.0


@dataclass(frozen=True)
class GainReduction:
    """What the limiter took off: the largest reduction and the mean over every sample, in dB
    (both 0 when it left the audio alone)."""

    max_db: float = 0.0
    mean_db: float = 0.0

    @staticmethod
    def of(total_gain: np.ndarray | None) -> "GainReduction":
        """From the total gain ``(T,)`` applied (``None``: none)."""
        if total_gain is None or total_gain.size == 0:
            return GainReduction()
        reduction_db = -20.0 * np.log10(np.maximum(total_gain.astype(np.float64), 1e-12))
        return GainReduction(max_db=float(reduction_db.max()), mean_db=float(reduction_db.mean()))


@numba.njit(cache=True)
def _limiter_gain_kernel(seg, ceiling, lookahead, before, after, release, snap, block, gain, touched):  # pragma: no cover
    """Fill ``gain`` ``(T,)`` (see :func:`_limiter_gain`) in one streaming pass; mark in
    ``touched`` the blocks of ``block`` samples where it is below 1. False if nothing is over."""
    n = seg.size
    any_over = False
    for t in range(n):
        if seg[t] > ceiling:
            any_over = True
            break
    if not any_over:
        return False
    cap = before + after + 2  # the window's indices, plus the one just pushed
    q_idx = np.empty(cap, np.int64)  # monotonic deque (a ring) of the window max
    q_val = np.empty(cap)
    head = 0
    size = 0
    width = lookahead + 1
    ring = np.empty(width)  # the last `width` held values, for the attack ramp's mean
    acc = 0.0
    decay = math.exp(-1.0 / release) if release > 0 else 0.0
    state = 0.0
    for j in range(n + after):
        if j < n:
            # 0. required reduction in dB at j, from the envelope (the points in (j - 1, j + 1))
            p = seg[j]
            if j > 0 and seg[j - 1] > p:
                p = seg[j - 1]
            v = 20.0 * math.log10(p / ceiling) if p > ceiling else 0.0
            while size > 0 and q_val[(head + size - 1) % cap] <= v:
                size -= 1
            pos = (head + size) % cap
            q_idx[pos] = j
            q_val[pos] = v
            size += 1
        t = j - after
        if t < 0:
            continue
        # 1. look-ahead window max over [t - before, t + after] (zeros outside the signal)
        while size > 0 and q_idx[head] < t - before:
            head = (head + 1) % cap
            size -= 1
        held = q_val[head] if size > 0 else 0.0
        # 2. attack ramp: causal mean over lookahead + 1 samples (held[0] before the start)
        if t == 0:
            ring[:] = held
            acc = held * width
        slot = t % width
        acc += held - ring[slot]
        ring[slot] = held
        r = acc / width
        if r < snap:
            r = 0.0  # running-sum rounding: no reduction means exactly none
        # 3. release: out[t] = max(in[t], a out[t - 1]); the snap ends the tail (gain exactly 1)
        if release > 0:
            state = max(r, state * decay)
            r = state if state >= snap else 0.0
        if r > 0.0:
            gain[t] = 10.0 ** (-r / 20.0)
            touched[t // block] = True
        else:
            gain[t] = 1.0
    return True


def _limiter_gain(peak_seg: np.ndarray, ceiling: float, lookahead: int, hold: int, release: float
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(gain, touched)``: gain ``(T,)`` float32 with ``gain[t] * envelope[t] <= ceiling``
    everywhere, exactly 1 far from any peak, and which ``_PEAK_BLOCK`` blocks it lowers; ``None``
    when nothing exceeds the ceiling.

    ``peak_seg`` is :func:`_peak_segments`; the envelope at ``t`` is its max over ``t - 1`` and
    ``t`` (the oversampled points in ``(t - 1, t + 1)``). Works on the required reduction in dB,
    ``r = max(0, 20 log10(envelope / ceiling))``:
    1. look-ahead window max over ``[t - hold, t + lookahead + hold]``;
    2. attack ramp: causal mean over ``lookahead + 1`` samples. Every value averaged at a peak's
       sample (and ``hold`` samples around it) already covers that peak, so the mean is at least its
       requirement: the gain is fully down when the peak arrives, reached by a linear ramp;
    3. release: ``out[t] = max(in[t], a * out[t - 1])``, an exponential decay of the reduction with
       time constant ``release`` samples.
    Each step only raises the reduction, so the guarantee of step 1 survives. One streaming pass
    (ring buffers the size of the windows): no intermediate signal-length arrays.
    """
    before, after = hold, lookahead + hold
    if (before + after) % 2:
        after += 1  # odd window (as a centred filter would have); one more sample of look-ahead is harmless
    gain = np.empty(peak_seg.size, np.float32)
    touched = np.zeros(-(-peak_seg.size // _PEAK_BLOCK), np.bool_)
    active = _limiter_gain_kernel(peak_seg, float(ceiling), int(lookahead), before, after, float(release),
                                  RELEASE_SNAP_DB, _PEAK_BLOCK, gain, touched)
    return (gain, touched) if active else None


def _limit(y: np.ndarray, seg: np.ndarray, sample_rate: int, ceiling_dbtp: float,
           lookahead_ms: float = 5.0, release_ms: float = 80.0, unmeasured: np.ndarray | None = None
           ) -> tuple[np.ndarray, float, GainReduction]:
    """Limit ``y`` ``(C, T)`` **in place**, given its per-interval peaks ``seg`` (updated in place);
    returns ``(y, its true peak, the gain reduction)``.

    ``unmeasured`` ``(n_blocks,)``, if given, marks blocks whose ``seg`` was not measured (zeros)
    with an upper bound of their peaks (0 for measured blocks); the bound must be below the
    limiter's aim (so the gain there is 1), and such blocks are measured at the end if they could
    hold the true peak.
    """
    ceiling = 10.0 ** (ceiling_dbtp / 20.0)
    lookahead = int(round(lookahead_ms * 1e-3 * sample_rate))
    hold = max(1, int(round(LIMITER_HOLD_MS * 1e-3 * sample_rate)))
    release = release_ms * 1e-3 * sample_rate
    total: np.ndarray | None = None  # the product of every pass's gain (and the trim)
    for _ in range(LIMITER_MAX_PASSES):  # later passes only touch residual inter-sample overshoots
        if seg.max() <= ceiling:
            break
        limited = _limiter_gain(seg, ceiling * 10.0 ** (-LIMITER_MARGIN_DB / 20.0), lookahead, hold, release)
        if limited is None:
            break
        gain, touched = limited
        y *= gain  # measure what will be returned
        total = gain if total is None else total * gain
        # Re-measure only where the gain moved (the interpolator reaches into the next block).
        near = touched.copy()
        near[1:] |= touched[:-1]
        near[:-1] |= touched[1:]
        _peak_segments(y, sample_rate, seg, np.flatnonzero(near))
    excess = float(seg.max()) / ceiling
    if excess > 1.0:
        # Last resort, not seen on music: a static trim. True peak is linear in the gain, so the
        # 1e-6 margin (far above float32 rounding) keeps the trimmed result below the ceiling.
        trim = (1.0 - 1e-6) / excess
        y *= y.dtype.type(trim)
        seg *= seg.dtype.type(trim)
        total = (np.ones(y.shape[-1], np.float32) if total is None else total) * np.float32(trim)
        if unmeasured is not None:
            unmeasured = unmeasured * trim
    peak = float(seg.max())
    if unmeasured is not None:  # the true peak: measure the blocks that could still exceed it
        for b in np.argsort(-unmeasured):
            if unmeasured[b] <= peak:
                break
            _peak_segments(y, sample_rate, seg, [b])
            peak = max(peak, float(seg[b * _PEAK_BLOCK : (b + 1) * _PEAK_BLOCK].max()))
    return y, peak, GainReduction.of(total)


def true_peak_limit(
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    ceiling_dbtp: float = -1.0,
    lookahead_ms: float = 5.0,
    release_ms: float = 80.0,
) -> np.ndarray:
    """Look-ahead true-peak limiter; the result's :func:`true_peak_dbtp` is ``<= ceiling_dbtp``.

    The gain follows the oversampled peak envelope, linked across channels: it ramps down over
    ``lookahead_ms`` before a peak (no overshoot), is held flat for ``LIMITER_HOLD_MS`` around it,
    and recovers with an exponential release (time constant ``release_ms``, in dB). Offline, so
    the output is aligned with the input (no latency) and has its shape and dtype. Audio whose
    true peak is already at or below the ceiling is returned unchanged (bit-exact copy).

    The guarantee: the gain keeps every oversampled sample of the input at or below the ceiling
    minus ``LIMITER_MARGIN_DB`` (0.001 dB), but a varying gain applied before interpolation can
    leave tiny inter-sample overshoots (~1e-4 dB on music, which the margin absorbs). The result
    is measured with the same 4x meter (where the gain moved); any excess gets another limiter
    pass on the output (at most ``LIMITER_MAX_PASSES`` in all, each touching only the overshooting
    regions), and an excess still left after that is removed by a static trim of the whole
    signal. The guarantee is with respect to :func:`true_peak_dbtp`'s BS.1770 meter; a finer
    oversampling can read up to ~0.01 dB more on music (more for content close to Nyquist), as
    with any 4x meter.
    """
    _check_rate(sample_rate)
    if lookahead_ms < 0 or release_ms < 0:
        raise ValueError(f"lookahead_ms and release_ms must be >= 0, got {lookahead_ms}, {release_ms}")
    x, shape, dtype = _as_channels_first(audio)
    y, _, _ = _limit(x.copy(), _peak_segments(x, sample_rate), sample_rate, ceiling_dbtp, lookahead_ms, release_ms)
    return y.astype(dtype, copy=False).reshape(shape)  # a copy, as documented


# --------------------------------------------------------------------------- the loudness stage


def _db(linear: float) -> float:
    return 20.0 * math.log10(linear) if linear > 0 else float("-inf")


class _Stage:
    """One input measured once for :func:`master_loudness`: its K-weighted block powers and, where
    a gain could take it over the ceiling, its true-peak envelope. A static gain scales both
    exactly, so a render re-measures only what its limiter changed."""

    def __init__(self, x: np.ndarray, sample_rate: int, dtype: np.dtype, ceiling_dbtp: float | None):
        self.x, self.sample_rate, self.dtype, self.ceiling_dbtp = x, sample_rate, dtype, ceiling_dbtp
        self.silent = not np.any(x)
        self.weights = _channel_weights(x.shape[0])
        # K-weighting is linear: a static gain g scales every block's mean square by g^2.
        self.block_ms = None if self.silent else _block_mean_squares(x, sample_rate)
        self.peak = _true_peak_linear(x, sample_rate)
        if ceiling_dbtp is not None:
            self.ceiling = 10.0 ** (ceiling_dbtp / 20.0)
            self.aim = self.ceiling * 10.0 ** (-LIMITER_MARGIN_DB / 20.0)  # what the limiter acts above
            _, self.bound = _peak_bounds(x, _gain_bound(_taps_for(x, sample_rate)))
            self.seg: np.ndarray | None = None  # the envelope, measured where a gain makes it count (when one does)
            self.exact = np.zeros(self.bound.size, bool)

    def loudness_at(self, gain: float) -> float:
        """LUFS of the input times ``gain`` (not limited), ``-inf`` for silence."""
        lufs = float("-inf") if self.silent else _gate(self.block_ms * gain**2, self.weights)
        return lufs if math.isfinite(lufs) else float("-inf")

    def render(self, gain_db: float) -> tuple[np.ndarray, float, float, GainReduction]:
        """The input at ``gain_db``, limited when it exceeds the ceiling: ``(audio, LUFS, true
        peak (linear), gain reduction)``; in the output dtype before limiting, so the limiter's
        final check sees the real samples."""
        x, g = self.x, 10.0 ** (gain_db / 20.0)
        if self.ceiling_dbtp is None or self.peak * g <= self.ceiling:
            y = (x * g).astype(self.dtype, copy=False) if gain_db != 0.0 else x
            return y, self.loudness_at(g), self.peak * g, GainReduction()
        # The limiter reads the envelope where it can exceed its aim; zeros elsewhere change nothing.
        need = ~self.exact & (self.bound * g > self.aim * (1.0 - 1e-6))
        if self.seg is None:  # a mono envelope the length of the input: only when limiting
            self.seg = np.zeros(x.shape[1], x.dtype)
        _peak_segments(x, self.sample_rate, self.seg, np.flatnonzero(need))
        self.exact[need] = True
        y = (x * g).astype(self.dtype, copy=False) if gain_db != 0.0 else x.copy()  # limited in place
        unmeasured = np.where(self.exact, 0.0, self.bound * g)
        y, peak, reduction = _limit(
            y, self.seg * self.seg.dtype.type(g), self.sample_rate, self.ceiling_dbtp, unmeasured=unmeasured
        )
        return y, _loudness(y, self.sample_rate), peak, reduction


def _corrected_gain_db(stage: _Stage, target_lufs: float, base_gain: float, first: tuple) -> tuple:
    """Secant passes on the measured loudness-vs-gain curve until the limited result is within
    ``MASTER_LOUDNESS_AIM_LU`` of the target; returns the pass closest to it, rendered:
    ``(gain_db, audio, LUFS, peak, reduction)``."""
    gain_db, y, lufs, peak, reduction = first
    history = [(gain_db, lufs)]  # only the last pass is kept in memory
    for _ in range(MASTER_MAX_PASSES):
        error = target_lufs - lufs
        if abs(error) <= MASTER_LOUDNESS_AIM_LU:
            break
        slope = 1.0  # dLUFS / dgain: 1 without limiting, less with it
        if len(history) >= 2:
            (g0, l0), (g1, l1) = history[-2], history[-1]
            if g1 != g0:
                slope = float(np.clip((l1 - l0) / (g1 - g0), 0.1, 1.0))
        lo, hi = base_gain - MASTER_MAX_EXTRA_GAIN_DB, min(base_gain + MASTER_MAX_EXTRA_GAIN_DB, MASTER_MAX_GAIN_DB)
        next_gain = float(np.clip(gain_db + error / slope, lo, hi))
        if next_gain == gain_db:
            break
        gain_db, y = next_gain, None  # let the previous pass go before rendering the next (memory)
        y, lufs, peak, reduction = stage.render(gain_db)
        history.append((gain_db, lufs))
    best_gain = min(history, key=lambda h: abs(h[1] - target_lufs))[0]
    if best_gain != gain_db:
        y = None
        y, lufs, peak, reduction = stage.render(best_gain)  # deterministic: the same samples as that pass
    return best_gain, y, lufs, peak, reduction


def master_loudness(
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    target_lufs: float | None,
    ceiling_dbtp: float | None,
    gain_db: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Gain to ``target_lufs``, then the true-peak limiter at ``ceiling_dbtp``; either may be ``None``.
    ``gain_db`` instead of a target: that static gain, once (no corrective passes), without a
    copy of the input made for it.

    The limiter lowers loudness when it works; so when both are on and the result is more than
    ``MASTER_LOUDNESS_AIM_LU`` from the target, the gain before the limiter is corrected and the
    limiter rerun (at most ``MASTER_MAX_PASSES`` times, the correction capped at
    ``MASTER_MAX_EXTRA_GAIN_DB`` above plain normalisation); the pass closest to the target is
    kept. Silence is passed through. The gain never exceeds ``MASTER_MAX_GAIN_DB`` (+24 dB): a
    target further away leaves the file 24 dB louder, short of the target (the caller says so).

    Returns:
        ``(audio, stats)``; ``audio`` has the input's shape and float dtype; ``stats`` has
        ``lufs_before``, ``lufs_after``, ``true_peak_before_dbtp``, ``true_peak_after_dbtp``,
        ``gain_db`` (the static gain before the limiter) and the limiter's
        ``limiter_max_reduction_db`` and ``limiter_mean_reduction_db``.
    """
    _check_rate(sample_rate)
    x, shape, dtype = _as_channels_first(audio)
    y, stats = loudness_and_limit(_Stage(x, sample_rate, dtype, ceiling_dbtp), target_lufs, ceiling_dbtp, gain_db)
    return y.reshape(shape).astype(dtype, copy=False), stats


def loudness_and_limit(stage, target_lufs: float | None, ceiling_dbtp: float | None, gain_db: float | None = None
                       ) -> tuple[object, dict]:
    """:func:`master_loudness` on a measured input: ``stage`` has ``loudness_at(gain)``, ``peak``
    and ``render(gain_db) -> (output, LUFS, true peak, reduction)`` (:class:`_Stage` for an array,
    :class:`automaster.mastering.streaming.StreamStage` for a file read a block at a time).
    Returns ``(stage's output, stats)``."""
    lufs_before = stage.loudness_at(1.0)
    base_gain = 0.0 if gain_db is None else min(float(gain_db), MASTER_MAX_GAIN_DB)
    if gain_db is None and target_lufs is not None and math.isfinite(lufs_before):
        base_gain = min(float(target_lufs - lufs_before), MASTER_MAX_GAIN_DB)
    fixed = gain_db is not None
    y, lufs_after, peak_after, reduction = stage.render(base_gain)
    gain_db = base_gain
    if not fixed and target_lufs is not None and ceiling_dbtp is not None and math.isfinite(lufs_after):
        first = (gain_db, y, lufs_after, peak_after, reduction)
        gain_db, y, lufs_after, peak_after, reduction = _corrected_gain_db(stage, target_lufs, base_gain, first)
    stats = {
        "lufs_before": lufs_before, "lufs_after": lufs_after,
        "true_peak_before_dbtp": _db(stage.peak), "true_peak_after_dbtp": _db(peak_after), "gain_db": gain_db,
        "limiter_max_reduction_db": reduction.max_db, "limiter_mean_reduction_db": reduction.mean_db,
    }
    return y, stats
