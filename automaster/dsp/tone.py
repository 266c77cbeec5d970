"""Long-term tonal balance and stereo width: measure them, match them to a reference, score the match.

Audio is ``(C, T)`` (channels first) or ``(T,)`` mono float at ``sample_rate`` Hz. Mid and side are
``(L + R) / 2`` and ``(L - R) / 2`` (mono: the channel, and no side); more than two channels use
the mean as mid and the first two for the side.

* :func:`tone_profile`: the average power spectrum of mid and side (Welch, Hann frames of about
  93 ms at any rate), smoothed over ``SMOOTHING_OCTAVES`` around each point of a log-frequency
  grid (``GRID_HZ``, 1/12 octave from 20 Hz to 20 kHz), plus the loudness and stereo width.
  Profiles of files at different sample rates share the grid, so they compare directly.
* :func:`match_tone`: a tone-matching EQ, one linear-phase FIR for the mid and one for the side
  (frequency sampling of the smoothed dB difference to the reference, bounded to +-``MAX_EQ_DB``,
  faded to 0 dB below ``EQ_LOW_HZ`` and above ``EQ_HIGH_HZ``), so the result takes the
  reference's mid spectrum and, through the side's own curve, its side spectrum and width. The
  filters are zero-delay (centred), so the result aligns sample for sample with the input.
* :func:`tone_error_db`: the distance users hear as "sounds like the reference": the mean absolute
  dB difference of the 1/3-octave band levels of the mid average spectra (``TONE_BANDS_HZ``,
  31.5 Hz to 16 kHz) after loudness matching (the output's levels shifted by the loudness
  difference).

Width is ``10 log10(side energy / mid energy)`` in dB: ``-inf`` for mono or dual mono, 0 dB when
the channels are uncorrelated, ``+inf`` for pure anti-phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from automaster.dsp import loudness as meter

GRID_HZ = 20.0 * 2.0 ** (np.arange(0, 10 * 12 + 1) / 12.0)  # 1/12 octave, 20 Hz .. 20.48 kHz
SMOOTHING_OCTAVES = 1.0 / 3.0
TONE_BANDS_HZ = 1000.0 * 2.0 ** (np.arange(-15, 15) / 3.0)  # 1/3-octave centres, 31.5 Hz .. 16 kHz
FRAME_S = 4096 / 44100  # Welch frame (~93 ms: 10.8 Hz bins)
MAX_EQ_DB = 12.0  # bound of the tone-matching EQ (either way)
MAX_SIDE_BOOST_DB = 6.0  # the side is raised by less: a near-mono side is mostly noise
EQ_LOW_HZ, EQ_HIGH_HZ = 25.0, 18000.0  # the EQ fades to 0 dB outside this span (over an octave below, 1/3 above)
FLOOR_BELOW_PEAK_DB = 80.0  # spectrum levels are floored this far below the spectrum's maximum
SILENT_SIDE_DB = -60.0  # a side this far below the mid counts as none (mono): left alone


@dataclass(frozen=True)
class ToneProfile:
    """Smoothed long-term spectra (dB on :data:`GRID_HZ`), loudness and width of one signal."""

    mid_db: np.ndarray
    side_db: np.ndarray
    lufs: float
    width_db: float
    bands_db: np.ndarray  # 1/3-octave band levels of the mid, on TONE_BANDS_HZ

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (``None`` for non-finite numbers)."""
        return {
            "grid_hz": GRID_HZ.round(2).tolist(), "mid_db": _json_list(self.mid_db), "side_db": _json_list(self.side_db),
            "lufs": _finite(self.lufs), "width_db": _finite(self.width_db),
            "bands_hz": TONE_BANDS_HZ.round(2).tolist(), "bands_db": _json_list(self.bands_db),
        }


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _json_list(x: np.ndarray) -> list[float | None]:
    return [_finite(round(float(v), 3)) for v in x]


def _channels(audio: np.ndarray) -> np.ndarray:
    x = np.asarray(audio)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[0] > meter.MAX_CHANNELS:
        raise ValueError(f"expected (C, T) or (T,) audio, got shape {np.shape(audio)}")
    return x


def mid_side(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mid (T,), side (T,))`` of ``(C, T)`` or ``(T,)`` audio; mono has a zero side."""
    x = _channels(audio)
    if x.shape[0] == 1:
        return x[0], np.zeros_like(x[0])
    return x.mean(axis=0), 0.5 * (x[0] - x[1])


def average_spectrum(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(freqs_hz, power)``: the Welch-averaged power spectrum of mono ``x`` (T,)."""
    n = int(2 ** round(math.log2(FRAME_S * sample_rate)))
    if x.shape[-1] < n:  # shorter than one frame: one zero-padded frame
        x = np.pad(x, (0, n - x.shape[-1]))
    import scipy.signal  # here, not at import: 0.6 s of a one-file master's start-up
    freqs, power = scipy.signal.welch(x.astype(np.float64), fs=sample_rate, window="hann", nperseg=n,
                                      noverlap=n // 2, detrend=False, scaling="density")
    return freqs, power


def _band_means(freqs: np.ndarray, power: np.ndarray, lo_hz: np.ndarray, hi_hz: np.ndarray) -> np.ndarray:
    """Mean power between each ``lo_hz`` and ``hi_hz`` (the spectrum's running integral, linearly
    interpolated, so bands narrower than a bin take the interpolated density there)."""
    df = freqs[1] - freqs[0]
    cum = np.concatenate([[0.0], np.cumsum(power)]) * df  # integral up to each bin's upper edge
    edges = np.concatenate([freqs - df / 2, [freqs[-1] + df / 2]])
    lo = np.clip(lo_hz, edges[0], edges[-1])
    hi = np.clip(hi_hz, edges[0], edges[-1])
    width = np.maximum(hi - lo, 1e-9)
    mean = (np.interp(hi, edges, cum) - np.interp(lo, edges, cum)) / width
    return np.where(hi > lo, mean, 0.0)


def _smoothed_db(freqs: np.ndarray, power: np.ndarray, centres_hz: np.ndarray, octaves: float) -> np.ndarray:
    half = 2.0 ** (octaves / 2.0)
    means = _band_means(freqs, power, centres_hz / half, centres_hz * half)
    return 10.0 * np.log10(np.maximum(means, 1e-30))


def _floored(db: np.ndarray, reference_max_db: float) -> np.ndarray:
    return np.maximum(db, reference_max_db - FLOOR_BELOW_PEAK_DB)


_WIDTH_BLOCK = 1 << 16


def stereo_width_db(audio: np.ndarray) -> float:
    """Side-to-mid energy ratio in dB (``-inf`` for mono).

    Summed a block at a time in float64 with numpy's pairwise sum: no temporary the size of the
    audio, and the same digits in every process (a BLAS dot product's order depends on its
    threads, so a Ray worker and the driver disagreed in the last digits)."""
    x = _channels(audio)
    if x.shape[0] == 1:
        return float("-inf")
    e_mid = e_side = 0.0
    for i in range(0, x.shape[1], _WIDTH_BLOCK):
        block = x[:, i : i + _WIDTH_BLOCK].astype(np.float64)
        mid, side = block.mean(axis=0), 0.5 * (block[0] - block[1])
        e_mid += float(np.sum(mid * mid))
        e_side += float(np.sum(side * side))
    if e_side == 0.0:
        return float("-inf")
    return float("inf") if e_mid == 0.0 else 10.0 * math.log10(e_side / e_mid)


def tone_profile(audio: np.ndarray, sample_rate: int) -> ToneProfile:
    """Smoothed mid/side spectra, 1/3-octave mid band levels, loudness (LUFS) and width (dB)."""
    x = _channels(audio)
    mid, side = mid_side(x)
    freqs, p_mid = average_spectrum(mid, sample_rate)
    _, p_side = average_spectrum(side, sample_rate)
    mid_db = _smoothed_db(freqs, p_mid, GRID_HZ, SMOOTHING_OCTAVES)
    side_db = _smoothed_db(freqs, p_side, GRID_HZ, SMOOTHING_OCTAVES)
    bands_db = _smoothed_db(freqs, p_mid, TONE_BANDS_HZ, 1.0 / 3.0)
    return ToneProfile(mid_db=mid_db, side_db=side_db, lufs=meter.integrated_loudness(x, sample_rate),
                       width_db=stereo_width_db(x), bands_db=bands_db)


def tone_error_db(output: ToneProfile, reference: ToneProfile) -> float:
    """Mean |dB| difference of the 1/3-octave mid band levels after loudness matching.

    ``nan`` when either is silent (no loudness to match).
    """
    if not (math.isfinite(output.lufs) and math.isfinite(reference.lufs)):
        return float("nan")
    top = float(reference.bands_db.max())
    out = _floored(output.bands_db + (reference.lufs - output.lufs), top)
    ref = _floored(reference.bands_db, top)
    return float(np.mean(np.abs(out - ref)))


def _edge_fade(freqs_hz: np.ndarray, nyquist_hz: float) -> np.ndarray:
    """1 inside [EQ_LOW_HZ, EQ_HIGH_HZ], fading (raised cosine over log frequency) to 0 outside."""
    f = np.maximum(freqs_hz, 1e-3)
    low = np.clip(np.log2(f / (EQ_LOW_HZ / 2.0)), 0.0, 1.0)  # one octave below EQ_LOW_HZ
    top = min(EQ_HIGH_HZ, 0.9 * nyquist_hz)
    high = np.clip(np.log2(top * 2 ** (1 / 3) / f) * 3.0, 0.0, 1.0)  # 1/3 octave above the top
    return (0.5 - 0.5 * np.cos(np.pi * low)) * (0.5 - 0.5 * np.cos(np.pi * high))


def matching_curves(source: ToneProfile, reference: ToneProfile) -> tuple[np.ndarray, np.ndarray, float]:
    """EQ curves in dB on :data:`GRID_HZ` that take ``source`` to ``reference``: ``(mid, side, offset_db)``.

    Both curves are relative to one level offset (the median mid difference between 100 Hz and
    10 kHz), so the mid keeps its overall level and the side's curve carries the width change.
    A source without a side (mono) gets a 0 dB side curve.
    """
    top = float(max(source.mid_db.max(), reference.mid_db.max()))
    diff_mid = _floored(reference.mid_db, top) - _floored(source.mid_db, top)
    core = (GRID_HZ >= 100.0) & (GRID_HZ <= 10000.0)
    offset = float(np.median(diff_mid[core]))
    mid = np.clip(diff_mid - offset, -MAX_EQ_DB, MAX_EQ_DB)
    has_side = math.isfinite(source.width_db) and source.width_db > SILENT_SIDE_DB
    if not has_side:
        return mid, np.zeros_like(mid), offset
    diff_side = _floored(reference.side_db, top) - _floored(source.side_db, top)
    side = np.clip(diff_side - offset, -MAX_EQ_DB, MAX_SIDE_BOOST_DB)
    return mid, side, offset


def _fir(curve_db: np.ndarray, sample_rate: int) -> np.ndarray:
    """Linear-phase FIR (odd length, ~93 ms at any rate) with the gain ``curve_db`` on GRID_HZ."""
    n_taps = int(2 ** round(math.log2(FRAME_S * sample_rate))) + 1
    nyq = sample_rate / 2.0
    freqs = np.linspace(0.0, nyq, 1025)
    gain_db = np.interp(np.log(np.maximum(freqs, 1.0)), np.log(GRID_HZ), curve_db) * _edge_fade(freqs, nyq)
    import scipy.signal  # here, not at import: 0.6 s of a one-file master's start-up
    return scipy.signal.firwin2(n_taps, freqs, 10.0 ** (gain_db / 20.0), fs=sample_rate, window="hann")


def _filter(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    half = (taps.size - 1) // 2
    import scipy.signal  # here, not at import: 0.6 s of a one-file master's start-up
    y = scipy.signal.oaconvolve(x.astype(np.float64), taps, mode="full")
    return y[half : half + x.shape[-1]]


def apply_tone_eq(audio: np.ndarray, sample_rate: int, mid_db: np.ndarray, side_db: np.ndarray) -> np.ndarray:
    """Filter the mid and side of ``audio`` ``(C, T)`` by the curves (dB on :data:`GRID_HZ`).

    Mono gets the mid curve; more than two channels get the mid curve on every channel.
    Returns float32 ``(C, T)`` aligned with the input.
    """
    x = _channels(audio)
    mid_taps = _fir(mid_db, sample_rate)
    if x.shape[0] != 2:
        return np.stack([_filter(ch, mid_taps) for ch in x]).astype(np.float32)
    mid, side = mid_side(x)
    m = _filter(mid, mid_taps)
    s = _filter(side, _fir(side_db, sample_rate)) if np.any(side_db) else side.astype(np.float64)
    return np.stack([m + s, m - s]).astype(np.float32)


def match_tone(audio: np.ndarray, sample_rate: int, reference: ToneProfile) -> tuple[np.ndarray, dict[str, object]]:
    """Match the tonal balance and width of ``audio`` ``(C, T)`` to ``reference``.

    Returns ``(matched (C, T) float32, info)``; ``info`` holds the largest cut and boost of each
    curve (dB), the widths before/after/reference (dB), and the tone error before and after.
    Silence is returned unchanged.
    """
    x = _channels(audio).astype(np.float32)
    before = tone_profile(x, sample_rate)
    if not math.isfinite(before.lufs):
        return x.copy(), {"applied": False, "note": "silent: no tone matching"}
    mid_db, side_db, _ = matching_curves(before, reference)
    y = apply_tone_eq(x, sample_rate, mid_db, side_db)
    after = tone_profile(y, sample_rate)
    info = {
        "applied": True,
        "mid_eq_db": [round(float(mid_db.min()), 2), round(float(mid_db.max()), 2)],
        "side_eq_db": [round(float(side_db.min()), 2), round(float(side_db.max()), 2)],
        "width_before_db": _finite(before.width_db), "width_after_db": _finite(after.width_db),
        "width_reference_db": _finite(reference.width_db),
        "tone_error_before_db": _finite(tone_error_db(before, reference)),
        "tone_error_after_db": _finite(tone_error_db(after, reference)),
    }
    return y, info
