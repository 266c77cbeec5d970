"""Loudness (ITU-R BS.1770-4), true peak, and the last mastering stages: gain and a true-peak limiter.

Audio is ``(C, T)`` (channels first) or ``(T,)`` mono, float, at ``sample_rate`` Hz; numpy
arrays or torch tensors are accepted, numpy arrays come back (in the input's float dtype).
Levels: LUFS for integrated loudness, dBTP for true peak, dB for gains.

Conventions chosen here (BS.1770 leaves them open or pyloudnorm does not handle them):

* **Silence** (or anything whose every 400 ms block is below the -70 LUFS absolute gate) has
  integrated loudness ``float("-inf")``; :func:`loudness_gain_db` then returns 0 dB (nothing to
  normalise) rather than an infinite gain.
* **Clips shorter than one 400 ms gating block** are measured as a single block spanning the whole
  clip (its K-weighted mean square), still subject to the -70 LUFS absolute gate.
* **Channel weights**: up to 5 channels follow pyloudnorm (L, R, C, Ls, Rs: 1, 1, 1, 1.41, 1.41).
  With 6 or more, the first six are taken as SMPTE/WAV 5.1 (L, R, C, LFE, Ls, Rs): the LFE is
  excluded (weight 0) as BS.1770 requires, Ls/Rs weigh 1.41, and any further channels 1.0.
* **True peak** oversamples 4x below 88.2 kHz, 2x up to 176.4 kHz and 1x above (BS.1770-4
  Annex 2 with ``oversample=4``), with soxr's very-high-quality linear-phase resampler, and is
  never below the sample peak.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pyloudnorm
import soxr
import torch
from scipy.ndimage import maximum_filter1d

BLOCK_S = 0.4  # BS.1770 gating block
STEP_S = 0.1  # 75 % overlap
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
MAX_CHANNELS = 64  # more "channels" than this is almost surely (T, C) audio passed by mistake
LIMITER_HOLD_MS = 0.5  # gain held flat around each peak: covers the interpolation kernel's main lobe
RELEASE_SNAP_DB = 1e-6  # reductions below this are exactly 0 dB (gain exactly 1, no tail)
LIMITER_MARGIN_DB = 1e-3  # aim this far below the ceiling: absorbs inter-sample residuals, stays above the snap
LIMITER_MAX_PASSES = 3
MASTER_LOUDNESS_AIM_LU = 0.1  # master_loudness stops correcting once this close to the target
MASTER_MAX_PASSES = 3  # corrective passes after the first
MASTER_MAX_EXTRA_GAIN_DB = 12.0  # corrective gain allowed on top of plain normalisation


# --------------------------------------------------------------------------- input handling


def _as_channels_first(audio: np.ndarray | torch.Tensor) -> tuple[np.ndarray, tuple[int, ...], np.dtype]:
    """``(C, T)`` float64 copy-free view where possible, the original shape, and the output dtype."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    out_dtype = audio.dtype if np.issubdtype(audio.dtype, np.floating) else np.dtype(np.float64)
    if audio.ndim == 1:
        x = audio[None, :]
    elif audio.ndim == 2:
        x = audio
    else:
        raise ValueError(f"expected (C, T) or (T,) audio, got shape {audio.shape}")
    if x.shape[0] > MAX_CHANNELS:
        raise ValueError(f"expected (C, T) audio (channels first), got shape {audio.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"expected at least one sample, got shape {audio.shape}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("audio contains NaN or Inf samples")
    return x, audio.shape, out_dtype


def _check_rate(sample_rate: int) -> None:
    if not sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")


# --------------------------------------------------------------------------- loudness


@functools.lru_cache(maxsize=8)
def _meter(sample_rate: int) -> pyloudnorm.Meter:
    return pyloudnorm.Meter(sample_rate)


def _channel_weights(n_channels: int) -> np.ndarray:
    if n_channels <= 5:
        return np.array([1.0, 1.0, 1.0, 1.41, 1.41][:n_channels])
    return np.array([1.0, 1.0, 1.0, 0.0, 1.41, 1.41] + [1.0] * (n_channels - 6))


def _k_weighted(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """BS.1770 K-weighting (pyloudnorm's two filter stages) of ``(C, T)`` audio."""
    y = x.copy()
    for stage in _meter(sample_rate)._filters.values():
        for ch in range(y.shape[0]):
            y[ch] = stage.apply_filter(y[ch])
    return y


def _gated_loudness(x: np.ndarray, sample_rate: int, weights: np.ndarray) -> float:
    """BS.1770-4 gated loudness of ``(C, T)`` audio with explicit channel ``weights``.

    Vectorised twin of pyloudnorm's gating; used where pyloudnorm cannot go (short clips, more
    than five channels). A clip shorter than one block is measured as one block of its length.
    """
    kw = _k_weighted(x, sample_rate)
    n = kw.shape[1]
    block = int(round(BLOCK_S * sample_rate))
    step = int(round(STEP_S * sample_rate))
    cum = np.concatenate([np.zeros((kw.shape[0], 1)), np.cumsum(kw**2, axis=1)], axis=1)
    if n < block:
        z = cum[:, -1:] / n  # (C, 1)
    else:
        starts = np.arange(0, n - block + 1, step)
        z = (cum[:, starts + block] - cum[:, starts]) / block  # (C, J) mean squares
    power = weights @ z  # (J,)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(power)
    above_abs = block_lufs >= ABSOLUTE_GATE_LUFS
    if not above_abs.any():
        return float("-inf")
    relative_gate = -0.691 + 10.0 * np.log10(power[above_abs].mean()) + RELATIVE_GATE_LU
    gated = above_abs & (block_lufs > relative_gate)
    return float(-0.691 + 10.0 * np.log10(power[gated].mean()))


def integrated_loudness(audio: np.ndarray | torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4) of ``(C, T)`` or ``(T,)`` audio.

    pyloudnorm measures the ordinary case (up to 5 channels, at least 400 ms). Silence gives
    ``-inf``; shorter clips and more channels follow the module's documented conventions.
    """
    _check_rate(sample_rate)
    x, _, _ = _as_channels_first(audio)
    if not np.any(x):
        return float("-inf")
    n_channels, n_samples = x.shape
    if n_channels > 5 or n_samples < BLOCK_S * sample_rate:
        return _gated_loudness(x, sample_rate, _channel_weights(n_channels))
    lufs = float(_meter(sample_rate).integrated_loudness(x.T))
    return lufs if math.isfinite(lufs) else float("-inf")


def loudness_gain_db(audio: np.ndarray | torch.Tensor, sample_rate: int, target_lufs: float) -> float:
    """Gain in dB that brings ``audio`` to ``target_lufs`` (0 for silence: nothing to normalise)."""
    lufs = integrated_loudness(audio, sample_rate)
    return float(target_lufs - lufs) if math.isfinite(lufs) else 0.0


def normalize_loudness(
    audio: np.ndarray | torch.Tensor, sample_rate: int, target_lufs: float
) -> tuple[np.ndarray, float]:
    """``(audio at target_lufs, applied gain in dB)``; a static gain, peaks are not limited."""
    x, shape, dtype = _as_channels_first(audio)
    gain_db = loudness_gain_db(x, sample_rate, target_lufs)
    return (x * 10.0 ** (gain_db / 20.0)).reshape(shape).astype(dtype, copy=False), gain_db


# --------------------------------------------------------------------------- true peak


def oversampling_factor(sample_rate: int, oversample: int = 4) -> int:
    """BS.1770-4 Annex 2: ``oversample`` below 88.2 kHz, half of it to 176.4 kHz, a quarter above."""
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    if sample_rate >= 176_400:
        return max(1, oversample // 4)
    if sample_rate >= 88_200:
        return max(1, oversample // 2)
    return int(oversample)


def _oversampled_abs(x: np.ndarray, sample_rate: int, factor: int) -> np.ndarray:
    """``|x|`` oversampled by ``factor`` and linked across channels (max): ``(C, T)`` -> ``(T * factor,)``."""
    env = None
    for channel in x:  # one contiguous channel at a time: faster than (T, C) and half the memory
        up = channel if factor == 1 else soxr.resample(channel, sample_rate, sample_rate * factor, quality="VHQ")
        up = np.abs(up)
        env = up if env is None else np.maximum(env, up, out=env)
    return env


def _true_peak_linear(x: np.ndarray, sample_rate: int, oversample: int = 4) -> float:
    factor = oversampling_factor(sample_rate, oversample)
    return float(max(np.abs(x).max(), _oversampled_abs(x, sample_rate, factor).max()))


def true_peak_dbtp(audio: np.ndarray | torch.Tensor, sample_rate: int, oversample: int = 4) -> float:
    """True peak in dBTP (BS.1770-4 Annex 2) over all channels; ``-inf`` for silence."""
    _check_rate(sample_rate)
    x, _, _ = _as_channels_first(audio)
    peak = _true_peak_linear(x, sample_rate, oversample)
    return 20.0 * math.log10(peak) if peak > 0 else float("-inf")


# --------------------------------------------------------------------------- limiter


def _window_max(r: np.ndarray, before: int, after: int) -> np.ndarray:
    """``out[t] = max(r[t - before .. t + after])`` (zeros outside the signal)."""
    if (before + after) % 2:
        after += 1  # odd window for a centred filter; one more sample of look-ahead is harmless
    size = before + after + 1
    padded = np.pad(r, (before, after))
    centred = maximum_filter1d(padded, size=size, mode="constant", cval=0.0)
    return centred[size // 2 : size // 2 + r.size]


def _per_sample_peak(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Linked true-peak envelope ``(T,)``: max ``|x|`` over the oversampled points in ``(t - 1, t + 1)``."""
    factor = oversampling_factor(sample_rate)
    up = _oversampled_abs(x, sample_rate, factor)  # (T * factor,)
    # seg[t]: max over the oversampled points in [t, t + 1); strided maxima, no (T, factor) reshape.
    seg = up[0::factor].copy()
    for phase in range(1, factor):
        np.maximum(seg, up[phase::factor], out=seg)
    np.maximum(seg, np.abs(x).max(axis=0), out=seg)  # never below the sample peak
    env = seg.copy()
    np.maximum(env[1:], seg[:-1], out=env[1:])
    return env


def _limiter_gain(
    peak: np.ndarray, ceiling: float, lookahead: int, hold: int, release: float
) -> np.ndarray:
    """Gain ``(T,)`` with ``gain[t] * peak[t] <= ceiling`` everywhere, exactly 1 far from any peak.

    Works on the required reduction in dB, ``r = max(0, 20 log10(peak / ceiling))``:
    1. look-ahead window max over ``[t - hold, t + lookahead + hold]``;
    2. attack ramp: causal mean over ``lookahead + 1`` samples. Every value averaged at a peak's
       sample (and ``hold`` samples around it) already covers that peak, so the mean is at least its
       requirement: the gain is fully down when the peak arrives, reached by a linear ramp;
    3. release: ``out[t] = max(in[t], a * out[t - 1])``, an exponential decay of the reduction with
       time constant ``release`` samples, computed in closed form as a running max in the log domain.
    Each step only raises the reduction, so the guarantee of step 1 survives.
    """
    with np.errstate(divide="ignore"):
        required = np.maximum(0.0, 20.0 * np.log10(np.maximum(peak, 1e-300) / ceiling))
    if not required.any():
        return np.ones_like(peak)
    held = _window_max(required, before=hold, after=lookahead + hold)
    cum = np.concatenate([[0.0], np.cumsum(np.concatenate([np.full(lookahead, held[0]), held]))])
    ramp = (cum[lookahead + 1 :] - cum[: -lookahead - 1]) / (lookahead + 1)
    ramp[ramp < RELEASE_SNAP_DB] = 0.0  # cumsum rounding: no reduction means exactly none
    if release > 0:
        decay = np.arange(ramp.size) / release  # -ln(a) * t
        with np.errstate(divide="ignore"):
            log_r = np.log(ramp)
        ramp = np.exp(np.maximum.accumulate(log_r + decay) - decay)
        ramp[ramp < RELEASE_SNAP_DB] = 0.0  # end the exponential tail: gain exactly 1 again
    return 10.0 ** (-ramp / 20.0)


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
    is measured with the same 4x meter; any excess gets another limiter pass on the output (at
    most ``LIMITER_MAX_PASSES`` in all, each touching only the overshooting regions), and an
    excess still left after that is removed by a static trim of the whole signal. The guarantee
    is with respect to :func:`true_peak_dbtp`'s BS.1770 meter; a finer oversampling can read up to
    ~0.01 dB more on music (more for content close to Nyquist), as with any 4x meter.
    """
    _check_rate(sample_rate)
    if lookahead_ms < 0 or release_ms < 0:
        raise ValueError(f"lookahead_ms and release_ms must be >= 0, got {lookahead_ms}, {release_ms}")
    x, shape, dtype = _as_channels_first(audio)
    ceiling = 10.0 ** (ceiling_dbtp / 20.0)
    lookahead = int(round(lookahead_ms * 1e-3 * sample_rate))
    hold = max(1, int(round(LIMITER_HOLD_MS * 1e-3 * sample_rate)))
    release = release_ms * 1e-3 * sample_rate

    y = x
    peak = _per_sample_peak(y, sample_rate)
    for _ in range(LIMITER_MAX_PASSES):  # later passes only touch residual inter-sample overshoots
        if peak.max() <= ceiling:
            break
        gain = _limiter_gain(peak, ceiling * 10.0 ** (-LIMITER_MARGIN_DB / 20.0), lookahead, hold, release)
        y = (y * gain).astype(dtype).astype(np.float64)  # measure what will be returned
        peak = _per_sample_peak(y, sample_rate)
    excess = peak.max() / ceiling
    if excess > 1.0:
        # Last resort, not seen on music: a static trim. True peak is linear in the gain, so the
        # 1e-6 margin (far above float32 rounding) keeps the trimmed result below the ceiling.
        y = y * ((1.0 - 1e-6) / excess)
    out = y.astype(dtype)
    return out.reshape(shape)


# --------------------------------------------------------------------------- the mastering stages


def master_loudness(
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    target_lufs: float | None,
    ceiling_dbtp: float | None,
) -> tuple[np.ndarray, dict]:
    """Gain to ``target_lufs``, then the true-peak limiter at ``ceiling_dbtp``; either may be ``None``.

    The limiter lowers loudness when it works; so when both stages are on and the result is more
    than ``MASTER_LOUDNESS_AIM_LU`` (0.1 LU) from the target, the gain before the limiter is
    corrected and the limiter rerun, at most ``MASTER_MAX_PASSES`` (3) times, by a secant step on
    the measured loudness-vs-gain curve, with the correction capped at ``MASTER_MAX_EXTRA_GAIN_DB``
    (12 dB) above plain normalisation. The pass closest to the target is kept. This lands within
    0.5 LU of the target whenever the ceiling allows it; when it does not (a target too loud for
    the ceiling) the result is as close as 12 dB of extra limiting gets. Silence is passed through.

    Returns:
        ``(audio, stats)``; ``audio`` has the input's shape and float dtype; ``stats`` has
        ``lufs_before``, ``lufs_after``, ``true_peak_before_dbtp``, ``true_peak_after_dbtp`` and
        ``gain_db`` (the static gain applied before the limiter).
    """
    _check_rate(sample_rate)
    x, shape, dtype = _as_channels_first(audio)
    lufs_before = integrated_loudness(x, sample_rate)
    true_peak_before = true_peak_dbtp(x, sample_rate)

    def render(gain_db: float) -> np.ndarray:
        # In the output dtype before limiting, so the limiter's final check sees the real samples.
        y = (x * 10.0 ** (gain_db / 20.0) if gain_db != 0.0 else x).astype(dtype, copy=False)
        if ceiling_dbtp is not None:
            y = true_peak_limit(y, sample_rate, ceiling_dbtp)
        return y

    base_gain = 0.0
    if target_lufs is not None and math.isfinite(lufs_before):
        base_gain = float(target_lufs - lufs_before)
    gain_db = base_gain
    y = render(gain_db)
    lufs_after = integrated_loudness(y, sample_rate)

    if target_lufs is not None and ceiling_dbtp is not None and math.isfinite(lufs_after):
        passes = [(gain_db, lufs_after, y)]
        for _ in range(MASTER_MAX_PASSES):
            error = target_lufs - lufs_after
            if abs(error) <= MASTER_LOUDNESS_AIM_LU:
                break
            slope = 1.0  # dLUFS / dgain: 1 without limiting, less with it
            if len(passes) >= 2:
                (g0, l0, _), (g1, l1, _) = passes[-2], passes[-1]
                if g1 != g0:
                    slope = float(np.clip((l1 - l0) / (g1 - g0), 0.1, 1.0))
            next_gain = float(np.clip(gain_db + error / slope, base_gain - MASTER_MAX_EXTRA_GAIN_DB,
                                      base_gain + MASTER_MAX_EXTRA_GAIN_DB))
            if next_gain == gain_db:
                break
            gain_db = next_gain
            y = render(gain_db)
            lufs_after = integrated_loudness(y, sample_rate)
            passes.append((gain_db, lufs_after, y))
        gain_db, lufs_after, y = min(passes, key=lambda p: abs(p[1] - target_lufs))

    out = y.reshape(shape).astype(dtype, copy=False)
    stats = {
        "lufs_before": lufs_before,
        "lufs_after": integrated_loudness(out, sample_rate),
        "true_peak_before_dbtp": true_peak_before,
        "true_peak_after_dbtp": true_peak_dbtp(out, sample_rate),
        "gain_db": gain_db,
    }
    return out, stats
