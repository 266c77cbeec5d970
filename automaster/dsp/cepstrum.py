"""Blind echo estimation from the real cepstrum.

An echo ``y = x + g · x(t − d)`` multiplies the spectrum by ``1 + g·e^{−jωd}``, whose log
magnitude has the Fourier series ``g·cos(ωd) − g²/2·cos(2ωd) + …``: in the real cepstrum
(inverse FFT of ``log |Y|``) it adds a peak of height ``g/2`` at quefrency ``d``, on top of the
music's own cepstrum, which is small and smooth there for most music. So the delay is the
peak's position and the gain twice its height (for a delay between two samples the peak is a
sampled sinc, whose amplitude a least-squares fit recovers).

Music has cepstral peaks of its own (exact loops, produced delays), which is why
:class:`EchoEstimate` carries the raw estimate and callers apply a threshold (how well it finds
echoes, and how strong the music's own peaks are: BENCHMARKS.md, "Echo stage").
:func:`detect_echo` goes further and confirms a peak before anyone undoes it: present at the
same delay in every section of the input, and not followed by a peak at twice its delay as
music repeating with that period is (its docstring; figures: BENCHMARKS.md, "Echo confirmation").

Long inputs are cut into segments whose log spectra are averaged (bounded memory; averaging
also steadies the music's part of the cepstrum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

SEGMENT_S = 30.0  # segment length for long inputs (the whole input when shorter)
FIT_HALF_WIDTH = 3  # samples each side of the peak in the sinc fit
PEAK_SEPARATION_S = 0.005  # distinct candidate echoes are at least this far apart


@dataclass(frozen=True)
class EchoEstimate:
    """``delay_s`` and ``gain`` of the strongest echo in the searched range; ``z``: the peak's
    height in robust standard deviations of the searched cepstrum (how much it stands out)."""

    delay_s: float
    gain: float
    z: float


def _segment_cepstrum(mono: np.ndarray, sample_rate: int, padding: int) -> np.ndarray:
    """The cepstrum of the mean log spectrum of about ``SEGMENT_S``-long equal segments, each
    zero-padded by at least ``padding`` samples (more than the longest delay sought: without it
    the echo wraps around and the estimate gets worse; more than that changes nothing measurable
    and costs FFT time)."""
    count = max(1, round(mono.size / (SEGMENT_S * sample_rate)))
    seg = -(-mono.size // count)
    n = scipy.fft.next_fast_len(seg + padding, real=True)
    acc = np.zeros(n // 2 + 1, np.float32)
    for s in range(0, mono.size, seg):
        mag = np.abs(scipy.fft.rfft(mono[s : s + seg], n, workers=1))
        floor = max(float(mag.max()) * 1e-6, np.finfo(np.float32).tiny)  # relative: level-free
        acc += np.log(np.maximum(mag, floor, out=mag), out=mag)
    return scipy.fft.irfft(acc / count, n, workers=1)


def _prepare(
    audio: np.ndarray, sample_rate: int, min_delay_s: float, max_delay_s: float
) -> tuple[np.ndarray, int, int]:
    """``(mono float32, lo, hi)``: the downmix and the delay range in samples, checked."""
    x = np.asarray(audio, dtype=np.float32)  # float32 FFTs: the peak is far above their rounding
    mono = x if x.ndim == 1 else x.mean(axis=0, dtype=np.float32)
    return (mono, *_delay_range(mono.size, sample_rate, min_delay_s, max_delay_s))


def _delay_range(size: int, sample_rate: int, min_delay_s: float, max_delay_s: float) -> tuple[int, int]:
    """``(lo, hi)``: the delay range in samples, checked against the input's ``size``."""
    lo = int(np.floor(min_delay_s * sample_rate))
    hi = int(np.ceil(max_delay_s * sample_rate))
    if not 0 < lo < hi:
        raise ValueError(f"empty delay range [{min_delay_s}, {max_delay_s}] s at {sample_rate} Hz")
    if size < 4 * hi:
        raise ValueError(f"{size} samples are too short to estimate an echo of up to {max_delay_s} s")
    return lo, hi


def _sinc_fit(c: np.ndarray, k: int, baseline: float) -> tuple[float, float]:
    """``(fractional offset, amplitude)`` of the sampled-sinc peak of ``c`` at integer quefrency
    ``k``: the offset from a parabola through the peak, the amplitude by least squares."""
    h = FIT_HALF_WIDTH
    a, b, d = (float(v) for v in c[k - 1 : k + 2])
    curve = a - 2 * b + d
    frac = float(np.clip(0.5 * (a - d) / curve, -0.5, 0.5)) if curve < 0 else 0.0
    template = np.sinc(np.arange(-h, h + 1) - frac)
    local = c[k - h : k + h + 1] - baseline
    return frac, float(local @ template / (template @ template))


def _amplitude_at(c: np.ndarray, delay: float) -> float:
    """Least-squares sinc amplitude of ``c`` at a known fractional quefrency ``delay`` (samples)."""
    h = FIT_HALF_WIDTH
    k = int(round(delay))
    template = np.sinc(np.arange(-h, h + 1) - (delay - k))
    return float(c[k - h : k + h + 1] @ template / (template @ template))


def _peaks(c: np.ndarray, lo: int, hi: int, count: int, sample_rate: int) -> list[EchoEstimate]:
    """The ``count`` highest cepstral peaks in ``[lo, hi)`` samples, strongest first, at least
    ``PEAK_SEPARATION_S`` apart, each fitted as in :func:`estimate_echo`."""
    h = FIT_HALF_WIDTH
    body = c[lo : hi + 1]
    med = float(np.median(body))
    mad = 1.4826 * float(np.median(np.abs(body - med)))
    order = np.argsort(body)[::-1]
    separation = PEAK_SEPARATION_S * sample_rate
    chosen: list[int] = []
    for i in order[: 50 * count]:
        if all(abs(int(i) - j) > separation for j in chosen):
            chosen.append(int(i))
            if len(chosen) == count:
                break
    out = []
    for i in chosen:
        k = lo + i
        if k - h < 0 or k + h + 1 > c.size:
            continue
        frac, amplitude = _sinc_fit(c, k, med)
        z = (float(c[k]) - med) / max(mad, 1e-12)
        out.append(EchoEstimate(delay_s=(k + frac) / sample_rate, gain=max(0.0, 2.0 * amplitude), z=z))
    return out


def estimate_echo(
    audio: np.ndarray, sample_rate: int, min_delay_s: float = 0.045, max_delay_s: float = 0.52
) -> EchoEstimate:
    """The strongest single echo of ``audio`` (``(T,)`` or ``(C, T)``, downmixed) with a delay in
    ``[min_delay_s, max_delay_s]``.

    Raises:
        ValueError: the input is shorter than four times ``max_delay_s`` (too short to tell an
            echo from the music), or the delay range is empty.
    """
    mono, lo, hi = _prepare(audio, sample_rate, min_delay_s, max_delay_s)
    c = _segment_cepstrum(mono, sample_rate, padding=2 * hi)
    return _peaks(c, lo, hi, 1, sample_rate)[0]


@dataclass(frozen=True)
class EchoDetection:
    """An echo candidate and whether it is confirmed (:func:`detect_echo`).

    ``delay_s``, ``gain``, ``z``: as in :class:`EchoEstimate` (the first confirmed candidate, else
    the strongest); ``section_gains``: the gain measured at that delay in each section of the
    input; ``second_harmonic``: the cepstrum at twice the delay, in gain units (``-gain^2 / 2``
    for a single echo); ``reasons``: why it is not confirmed (empty when it is).
    """

    delay_s: float
    gain: float
    z: float
    confirmed: bool
    reasons: tuple[str, ...]
    section_gains: tuple[float, ...]
    second_harmonic: float


SECTIONS = 3  # sections of the input compared by the consistency check
SECTION_AGREEMENT = 0.4  # the weakest section's gain over the strongest's, at least
HARMONIC_SHARE = 0.5  # cepstrum at twice the delay over the gain, at most
CANDIDATES = 3  # cepstral peaks tried, strongest first


def _check(candidate: EchoEstimate, c: np.ndarray, sections: list[np.ndarray], sample_rate: int, min_gain: float) -> EchoDetection:
    """Confirm one candidate (:func:`detect_echo` says why each test)."""
    delay = candidate.delay_s * sample_rate
    gains = tuple(2.0 * _amplitude_at(s, delay) for s in sections)
    h2 = 2.0 * _amplitude_at(c, 2.0 * delay) if 2.0 * delay + FIT_HALF_WIDTH + 1 < c.size else 0.0
    reasons = []
    if candidate.gain < min_gain:
        reasons.append(f"gain {candidate.gain:.3f} < {min_gain:g}")
    if gains and min(gains) < SECTION_AGREEMENT * max(max(gains), 1e-9):
        listed = "/".join(f"{g:.2f}" for g in gains)
        reasons.append(f"sections disagree: gains {listed} at {candidate.delay_s:.3f} s (an echo is in all)")
    if h2 > HARMONIC_SHARE * candidate.gain:
        reasons.append(f"cepstrum at twice the delay {h2:+.3f} > {HARMONIC_SHARE:g} x gain: the music repeats")
    return EchoDetection(candidate.delay_s, candidate.gain, candidate.z, not reasons, tuple(reasons), gains, h2)


def detect_echo(
    audio: np.ndarray,
    sample_rate: int,
    *,
    min_gain: float,
    min_delay_s: float = 0.045,
    max_delay_s: float = 0.52,
) -> EchoDetection:
    """The strongest *confirmed* echo of ``audio`` (``(T,)`` or ``(C, T)``) in the delay range.

    Music repeats itself (loops, riffs, beats), which also puts peaks in the cepstrum. The
    ``CANDIDATES`` highest peaks are tried, strongest first; one is confirmed when:

    * its gain is at least ``min_gain``;
    * every one of ``SECTIONS`` equal sections of the input shows it at the same delay, the
      weakest with at least ``SECTION_AGREEMENT`` of the strongest's gain: an effect applies
      to the whole input, whereas a repetition comes and goes with the arrangement (undoing it
      where it is absent would add a negative echo there);
    * the cepstrum at twice the delay is at most ``HARMONIC_SHARE`` x the gain: a single echo
      puts ``-gain^2 / 2`` there and a feedback delay ``gain (feedback - gain / 2)``, whereas
      music repeating with that period is as strong at two periods as at one.

    Inputs too short for sections (under ``SECTIONS`` x 4 x ``max_delay_s``) skip that test.

    Raises:
        ValueError: as :func:`estimate_echo`.
    """
    mono, lo, hi = _prepare(audio, sample_rate, min_delay_s, max_delay_s)
    return _detect(mono, sample_rate, lo, hi, min_gain)


def _detect(mono, sample_rate: int, lo: int, hi: int, min_gain: float) -> EchoDetection:
    """:func:`detect_echo` on a prepared downmix: ``mono`` is an array or anything with ``size``
    whose slices are arrays (a long file read a segment at a time, :func:`detect_echo_in`)."""
    c = _segment_cepstrum(mono, sample_rate, padding=2 * hi)
    count = SECTIONS if mono.size >= SECTIONS * 4 * hi else 0
    length = mono.size // max(count, 1)
    sections = [_segment_cepstrum(_Window(mono, i * length, length), sample_rate, padding=2 * hi) for i in range(count)]
    checked = [_check(e, c, sections, sample_rate, min_gain) for e in _peaks(c, lo, hi, CANDIDATES, sample_rate)]
    return next((d for d in checked if d.confirmed), checked[0])


class _Window:
    """``mono[start : start + size]``, sliced lazily (each slice read when asked for)."""

    def __init__(self, mono, start: int, size: int):
        self.mono, self.start, self.size = mono, start, size

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b, _ = key.indices(self.size)
        return self.mono[self.start + a : self.start + b]


def detect_echo_in(
    mono, sample_rate: int, *, min_gain: float, min_delay_s: float = 0.045, max_delay_s: float = 0.52,
) -> EchoDetection:
    """:func:`detect_echo` of a downmix that need not be in memory: ``mono`` has a ``size`` and
    its slices are float32 arrays (a segment of ``SEGMENT_S`` is read at a time). The same
    segments, sections and tests as :func:`detect_echo`.

    Raises:
        ValueError: as :func:`estimate_echo`.
    """
    return _detect(mono, sample_rate, *_delay_range(mono.size, sample_rate, min_delay_s, max_delay_s), min_gain)
