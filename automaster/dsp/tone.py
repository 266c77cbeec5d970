"""Long-term tonal balance and stereo width: measure them, match them to a reference, score the match.

Audio is ``(C, T)`` (channels first) or ``(T,)`` mono float at ``sample_rate`` Hz. Mid and side are
``(L + R) / 2`` and ``(L - R) / 2`` (mono: the channel, and no side); more than two channels use
the mean as mid and the first two for the side.

* :func:`tone_profile`: the average power spectrum of mid and side (Welch, Hann frames of about
  93 ms at any rate), smoothed over ``SMOOTHING_OCTAVES`` around each point of a log-frequency
  grid (``GRID_HZ``, 1/12 octave from 20 Hz to 20 kHz), plus the loudness and stereo width.
  Profiles of files at different sample rates share the grid, so they compare directly.
* :func:`match_tone`: a tone-matching EQ, one linear-phase FIR for the mid and one for the side:
  the dB difference of the spectra to the reference's, measured from the level about which it best
  fits the bound (``max_eq_db``, default ``MAX_EQ_DB``; the one that least changes the energy
  among those), clipped to +-the bound and smoothed over ``EQ_SMOOTHING_OCTAVES`` (broad strokes,
  no notches; still within the bound), faded to its level below ``EQ_LOW_HZ`` and above
  ``EQ_HIGH_HZ``. The side's curve carries a broadband gain, within the same bound, that takes the
  stereo width toward the reference's and never past it: the width after the EQ is predicted
  from the average spectra through the designed filters (the mid's EQ changes the mid's energy,
  and so the width), then landed exactly by a last broadband side gain. The filters are
  zero-delay (centred), so the result aligns sample for sample with the input.
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
FIR_S = 4096 / 44100  # length of the matching EQ's filters
MAX_EQ_DB = 6.0  # default bound of the tone-matching EQ, either way, mid and side (--max-eq-db)
# Standard deviation of the Gaussian (over log frequency) that smooths the bounded dB difference:
# broad strokes, no notches (a second difference of at most max_eq_db * 0.97 / 3**2 per 1/12 octave).
EQ_SMOOTHING_OCTAVES = 1.0 / 4.0
# The width aims short of the reference's, on the source's side, by this share of the gap (at least
# WIDTH_MARGIN_DB): the limiter after it moves the width by up to about 0.2 dB (measured on fma_mini).
WIDTH_SHORT = 0.1
WIDTH_MARGIN_DB = 0.25
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


_WELCH_BATCH = 64  # frames per FFT batch: a bounded temporary whatever the length


def average_spectrum(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(freqs_hz, power)``: the Welch-averaged power spectrum of mono ``x`` (T,).

    scipy.signal.welch's estimate (periodic Hann frames of ``FRAME_S``, half overlap, no detrend,
    one-sided density; equal to it to ~1e-10, tested), in float64 batches of frames: three times
    faster than welch, no copy of the signal, and no scipy.signal import (0.6 s of a one-file
    master's start-up)."""
    n = int(2 ** round(math.log2(FRAME_S * sample_rate)))
    if x.shape[-1] < n:  # shorter than one frame: one zero-padded frame
        x = np.pad(x, (0, n - x.shape[-1]))
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[:: n // 2]
    power = np.zeros(n // 2 + 1)
    for i in range(0, frames.shape[0], _WELCH_BATCH):
        spec = np.fft.rfft(frames[i : i + _WELCH_BATCH] * window, axis=-1)
        power += (spec.real**2 + spec.imag**2).sum(axis=0)
    power /= frames.shape[0] * sample_rate * float(np.sum(window * window))
    power[1 : -1 if n % 2 == 0 else None] *= 2.0  # one-sided: every bin but DC and Nyquist twice
    return np.fft.rfftfreq(n, 1.0 / sample_rate), power


def mid_spectrum_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The mid's smoothed long-term spectrum on :data:`GRID_HZ` (dB), as :func:`tone_profile`'s
    ``mid_db``, without the side, loudness and width it also measures (the report's picture)."""
    freqs, power = average_spectrum(mid_side(audio)[0], sample_rate)
    return _smoothed_db(freqs, power, GRID_HZ, SMOOTHING_OCTAVES)


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
    return _profile(audio, sample_rate)[0]


def _profile(audio: np.ndarray, sample_rate: int) -> tuple[ToneProfile, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The :class:`ToneProfile` and the average spectra it came from: ``(freqs, mid power, side power)``."""
    x = _channels(audio)
    mid, side = mid_side(x)
    freqs, p_mid = average_spectrum(mid, sample_rate)
    _, p_side = average_spectrum(side, sample_rate)
    mid_db = _smoothed_db(freqs, p_mid, GRID_HZ, SMOOTHING_OCTAVES)
    side_db = _smoothed_db(freqs, p_side, GRID_HZ, SMOOTHING_OCTAVES)
    bands_db = _smoothed_db(freqs, p_mid, TONE_BANDS_HZ, 1.0 / 3.0)
    profile = ToneProfile(mid_db=mid_db, side_db=side_db, lufs=meter.integrated_loudness(x, sample_rate),
                          width_db=stereo_width_db(x), bands_db=bands_db)
    return profile, (freqs, p_mid, p_side)


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


def _smooth(curve_db: np.ndarray, octaves: float) -> np.ndarray:
    """Gaussian smoothing over the 1/12-octave grid (``octaves``: the kernel's standard deviation)."""
    import scipy.ndimage  # here, not at import: 0.6 s of a one-file master's start-up
    return scipy.ndimage.gaussian_filter1d(curve_db, sigma=12.0 * octaves, mode="nearest")


def _centre(diff_db: np.ndarray, bound_db: float, spectrum_db: np.ndarray) -> float:
    """The level to measure a difference curve from: of the levels about which the most of the
    curve (within the EQ's span) fits +-``bound_db``, the one whose EQ least changes the energy of
    a signal with ``spectrum_db`` (dB on GRID_HZ): a gain-neutral EQ leaves the side's broadband
    gain the most room to set the width."""
    span = (GRID_HZ >= EQ_LOW_HZ) & (GRID_HZ <= EQ_HIGH_HZ)
    core = diff_db[span]
    levels = np.arange(core.min(), core.max() + 0.01, 0.01)  # (L,)
    excess = np.maximum(np.abs(core[None] - levels[:, None]) - bound_db, 0.0).sum(axis=1)  # (L,)
    best = levels[excess <= excess.min() + 1e-6]  # (B,)
    weight = 10.0 ** ((spectrum_db[span] - spectrum_db[span].max()) / 10.0) * GRID_HZ[span]  # power per grid step
    gains = 10.0 ** (np.clip(core[None] - best[:, None], -bound_db, bound_db) / 10.0)  # (B, F)
    return float(best[np.argmin(np.abs(np.log(gains @ weight / weight.sum())))])


def _at_bound(curve_db: np.ndarray, bound_db: float) -> bool:
    """Whether an applied curve reaches its bound (within 0.05 dB)."""
    return bool(np.any(np.abs(curve_db) >= bound_db - 0.05))


def _bounded(diff_db: np.ndarray, bound_db: float) -> np.ndarray:
    """``diff_db`` clipped to +-``bound_db``, then smoothed (an average: still within the bound)."""
    return _smooth(np.clip(diff_db, -bound_db, bound_db), EQ_SMOOTHING_OCTAVES)


def matching_curves(source: ToneProfile, reference: ToneProfile, max_eq_db: float = MAX_EQ_DB) -> tuple[np.ndarray, np.ndarray]:
    """The dB differences (on :data:`GRID_HZ`) that take ``source``'s mid and side spectra to
    ``reference``'s: ``(mid, side)``, each measured from the level about which it best fits
    +-``max_eq_db`` and least changes the source's energy (the mid's level does not matter: the
    loudness stage follows; the side's broadband gain is set by the width in :func:`match_tone`).
    Not yet bounded nor smoothed.
    """
    top = float(max(source.mid_db.max(), reference.mid_db.max()))
    curves = []
    for src, ref in ((source.mid_db, reference.mid_db), (source.side_db, reference.side_db)):
        diff = _floored(ref, top) - _floored(src, top)
        curves.append(diff - _centre(diff, max_eq_db, src))
    return curves[0], curves[1]


def _gain_db(curve_db: np.ndarray, level_db: float, freqs_hz: np.ndarray, nyquist_hz: float) -> np.ndarray:
    """The EQ's gain at ``freqs_hz``: ``curve_db`` (on GRID_HZ) faded to ``level_db`` outside the EQ's span."""
    inside = np.interp(np.log(np.maximum(freqs_hz, 1.0)), np.log(GRID_HZ), curve_db)
    return level_db + (inside - level_db) * _edge_fade(freqs_hz, nyquist_hz)


def _fir(curve_db: np.ndarray, level_db: float, sample_rate: int) -> np.ndarray:
    """Linear-phase FIR (odd length, ~``FIR_S`` at any rate) with the gain of :func:`_gain_db`."""
    n_taps = int(2 ** round(math.log2(FIR_S * sample_rate))) + 1
    nyq = sample_rate / 2.0
    # Design points 1/48 octave apart: linearly spaced ones leave the low end to a handful.
    freqs = np.concatenate([[0.0], 5.0 * 2.0 ** (np.arange(0.0, math.log2(nyq / 5.0), 1.0 / 48.0)), [nyq]])
    gain_db = _gain_db(curve_db, level_db, freqs, nyq)
    import scipy.signal  # here, not at import: 0.6 s of a one-file master's start-up
    return scipy.signal.firwin2(n_taps, freqs, 10.0 ** (gain_db / 20.0), fs=sample_rate, window="hann")


def _filter(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    half = (taps.size - 1) // 2
    import scipy.signal  # here, not at import: 0.6 s of a one-file master's start-up
    y = scipy.signal.oaconvolve(x.astype(np.float64), taps, mode="full")
    return y[half : half + x.shape[-1]]


def apply_tone_eq(
    audio: np.ndarray, sample_rate: int, mid_db: np.ndarray, side_db: np.ndarray, side_level_db: float = 0.0,
) -> np.ndarray:
    """Filter the mid and side of ``audio`` ``(C, T)`` by the curves (dB on :data:`GRID_HZ`).

    The mid curve fades to 0 dB outside ``EQ_LOW_HZ``..``EQ_HIGH_HZ``, the side's to
    ``side_level_db`` (its broadband gain). Mono gets the mid curve; more than two channels get
    the mid curve on every channel. Returns float32 ``(C, T)`` aligned with the input.
    """
    x = _channels(audio)
    mid_taps = _fir(mid_db, 0.0, sample_rate)
    if x.shape[0] != 2:
        return np.stack([_filter(ch, mid_taps) for ch in x]).astype(np.float32)
    mid, side = mid_side(x)
    m = _filter(mid, mid_taps)
    flat = not np.any(side_db - side_level_db)
    s = side * 10.0 ** (side_level_db / 20.0) if flat else _filter(side, _fir(side_db, side_level_db, sample_rate))
    return np.stack([m + s, m - s]).astype(np.float32)


def _energy_db(freqs: np.ndarray, power: np.ndarray, curve_db: np.ndarray, level_db: float, sample_rate: int) -> float:
    """The change of energy (dB) the EQ's filter makes on a signal of average power spectrum
    ``power`` (on ``freqs``, evenly spaced from 0 Hz): through the designed filter's own response,
    which smears the curve at the low end."""
    taps = _fir(curve_db, level_db, sample_rate)
    n_bins = 2 * (freqs.size - 1)
    n_fft = n_bins * -(-taps.size // n_bins)  # a multiple of the spectrum's length, at least the filter's
    gain = np.abs(np.fft.rfft(taps, n_fft)[:: n_fft // n_bins]) ** 2
    return 10.0 * math.log10(max(float(np.dot(power, gain)), 1e-300) / max(float(power.sum()), 1e-300))


def _width_aim(before_db: float, reference_db: float) -> float:
    """The width to land on: the reference's, a little short of it on the source's side."""
    gap = before_db - reference_db
    short = max(WIDTH_MARGIN_DB, WIDTH_SHORT * abs(gap))
    return reference_db + float(np.clip(gap, -short, short))


def _side_for_width(
    diff_db: np.ndarray, spectra: tuple[np.ndarray, np.ndarray, np.ndarray], mid_db: np.ndarray,
    width_db: float, aim_db: float, bound_db: float, sample_rate: int,
) -> tuple[np.ndarray, float]:
    """``(side curve, broadband side gain)`` within +-``bound_db`` whose predicted width (from the
    average spectra ``(freqs, mid power, side power)``) is nearest ``aim_db``.

    The width after the EQ is the width before plus the side's energy change minus the mid's; the
    side's grows with its broadband gain, so a bisection finds it. Every gain the side can take
    reaches the width before (the mid's change is within the bound too), so the result lies between
    the width before and the aim.
    """
    freqs, p_mid, p_side = spectra
    mid_change = _energy_db(freqs, p_mid, mid_db, 0.0, sample_rate)

    def curve(gain: float) -> tuple[np.ndarray, float]:
        return _bounded(diff_db + gain, bound_db), float(np.clip(gain, -bound_db, bound_db))

    def width(gain: float) -> float:
        return width_db + _energy_db(freqs, p_side, *curve(gain), sample_rate) - mid_change

    lo, hi = -bound_db - float(diff_db.max()), bound_db - float(diff_db.min())  # all at -bound .. all at +bound
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if width(mid) < aim_db else (lo, mid)
    return curve(0.5 * (lo + hi))


def match_tone(
    audio: np.ndarray, sample_rate: int, reference: ToneProfile, max_eq_db: float = MAX_EQ_DB,
) -> tuple[np.ndarray, dict[str, object]]:
    """Match the tonal balance and width of ``audio`` ``(C, T)`` to ``reference``.

    The mid gets the smooth matching curve; the side its own curve plus a broadband gain that
    takes the width toward the reference's, never past it; both within +-``max_eq_db``. Returns
    ``(matched (C, T) float32, info)``; ``info`` holds the applied curves (``eq_hz``,
    ``eq_mid_db``, ``eq_side_db``: dB on the 1/12-octave grid), their ranges (``mid_eq_db``,
    ``side_eq_db``: ``[min, max]``), ``side_gain_db`` (the side's broadband gain), ``max_eq_db``,
    ``at_bound`` (``{"mid": bool, "side": bool}``: a curve reaches the bound), the widths
    before/after/reference (dB) and the tone error before and after. Silence is returned unchanged.
    """
    if not (math.isfinite(max_eq_db) and max_eq_db > 0):
        raise ValueError(f"max_eq_db must be a finite number > 0, got {max_eq_db}")
    x = _channels(audio).astype(np.float32)
    before, spectra = _profile(x, sample_rate)
    if not math.isfinite(before.lufs):
        return x.copy(), {"applied": False, "note": "silent: no tone matching"}
    nyq = sample_rate / 2.0
    mid_diff, side_diff = matching_curves(before, reference, max_eq_db)
    mid_db, side_db, side_level = _bounded(mid_diff, max_eq_db), np.zeros_like(mid_diff), 0.0
    stereo = x.shape[0] == 2 and math.isfinite(before.width_db) and before.width_db > SILENT_SIDE_DB
    aim = _width_aim(before.width_db, reference.width_db) if stereo and math.isfinite(reference.width_db) else None
    if aim is not None:
        side_db, side_level = _side_for_width(side_diff, spectra, mid_db, before.width_db, aim, max_eq_db, sample_rate)
    y = apply_tone_eq(x, sample_rate, mid_db, side_db, side_level)
    if aim is not None:  # the prediction is close; a broadband side gain (exact) lands the width, within the bound
        # The EQ's gains lie between the curve's and the level, so the room is theirs to the bound.
        room = (-max_eq_db - min(float(side_db.min()), side_level), max_eq_db - max(float(side_db.max()), side_level))
        fix = float(np.clip(aim - stereo_width_db(y), *room))
        mid, side = mid_side(y)
        side = side * np.float32(10.0 ** (fix / 20.0))
        y = np.stack([mid + side, mid - side]).astype(np.float32)
        side_db, side_level = side_db + fix, side_level + fix
    after = tone_profile(y, sample_rate)
    eq_mid, eq_side = _gain_db(mid_db, 0.0, GRID_HZ, nyq), _gain_db(side_db, side_level, GRID_HZ, nyq)
    info = {
        "applied": True, "max_eq_db": max_eq_db,
        "mid_eq_db": [round(float(eq_mid.min()), 2), round(float(eq_mid.max()), 2)],
        "side_eq_db": [round(float(eq_side.min()), 2), round(float(eq_side.max()), 2)],
        "side_gain_db": round(side_level, 2),
        "at_bound": {"mid": _at_bound(eq_mid, max_eq_db), "side": _at_bound(eq_side, max_eq_db)},
        "eq_hz": GRID_HZ.round(1).tolist(), "eq_mid_db": eq_mid.round(2).tolist(), "eq_side_db": eq_side.round(2).tolist(),
        "width_before_db": _finite(before.width_db), "width_after_db": _finite(after.width_db),
        "width_reference_db": _finite(reference.width_db),
        "tone_error_before_db": _finite(tone_error_db(before, reference)),
        "tone_error_after_db": _finite(tone_error_db(after, reference)),
    }
    return y, info
