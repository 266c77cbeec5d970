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

Long inputs are cut into segments whose log spectra are averaged (bounded memory; averaging
also steadies the music's part of the cepstrum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

SEGMENT_S = 30.0  # segment length for long inputs (the whole input when shorter)
FIT_HALF_WIDTH = 3  # samples each side of the peak in the sinc fit


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


def estimate_echo(
    audio: np.ndarray, sample_rate: int, min_delay_s: float = 0.045, max_delay_s: float = 0.52
) -> EchoEstimate:
    """The strongest single echo of ``audio`` (``(T,)`` or ``(C, T)``, downmixed) with a delay in
    ``[min_delay_s, max_delay_s]``.

    Raises:
        ValueError: the input is shorter than four times ``max_delay_s`` (too short to tell an
            echo from the music), or the delay range is empty.
    """
    x = np.asarray(audio, dtype=np.float32)  # float32 FFTs: the peak is far above their rounding
    mono = x if x.ndim == 1 else x.mean(axis=0, dtype=np.float32)
    lo = int(np.floor(min_delay_s * sample_rate))
    hi = int(np.ceil(max_delay_s * sample_rate))
    if not 0 < lo < hi:
        raise ValueError(f"empty delay range [{min_delay_s}, {max_delay_s}] s at {sample_rate} Hz")
    if mono.size < 4 * hi:
        raise ValueError(f"{mono.size} samples are too short to estimate an echo of up to {max_delay_s} s")
    c = _segment_cepstrum(mono, sample_rate, padding=2 * hi)
    h = FIT_HALF_WIDTH
    window = c[lo - h : hi + h + 1]
    body = window[h:-h]
    k = int(np.argmax(body)) + h  # index in `window`
    med = float(np.median(body))
    mad = 1.4826 * float(np.median(np.abs(body - med)))
    z = (float(window[k]) - med) / max(mad, 1e-12)
    # Fractional position from a parabola through the peak, then the sinc amplitude by least squares.
    a, b, d = (float(v) for v in window[k - 1 : k + 2])
    curve = a - 2 * b + d
    frac = float(np.clip(0.5 * (a - d) / curve, -0.5, 0.5)) if curve < 0 else 0.0
    offsets = np.arange(-h, h + 1)
    template = np.sinc(offsets - frac)
    local = window[k - h : k + h + 1] - med
    amplitude = float(local @ template / (template @ template))
    delay = (lo - h + k + frac) / sample_rate
    return EchoEstimate(delay_s=delay, gain=max(0.0, 2.0 * amplitude), z=z)
