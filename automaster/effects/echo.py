"""One-tap echo ``y = x + gain x(t - delay_s)`` and its IIR inverse, both in the frequency domain.

The time-domain inverse (:func:`echo_inverse_time`, :class:`EchoInverseStream`) also undoes a
feedback delay ``y = x + g x(t - d) + feedback (y(t - d) - x(t - d))``, i.e. ``(1 + a z^-d) / (1 -
feedback z^-d)`` with ``a = g - feedback`` (pedalboard's Delay and most delay pedals): the
feed-forward comb ``y - feedback y(t - d)`` undoes the pole, the IIR with gain ``a`` the zero.
:class:`MultiEchoInverseStream` undoes a multi-tap echo ``1 + sum g_i z^-d_i`` exactly.

The delay is a phase ramp ``exp(-j 2 pi f delay_s)``, so fractional delays are exact (band-limited)
and differentiable w.r.t. ``delay_s``. The inverse ``x = y - gain x(t - delay_s)`` is the division
``Y / (1 + gain exp(-j 2 pi f delay_s))``; its impulse response decays as ``gain^k`` at ``k`` delays,
so the signal is zero-padded until that tail is below ``WRAP_TOLERANCE`` before it wraps around.

Shapes: audio ``(B, C, T)``; ``delay_s`` (seconds) and ``gain`` (linear) per clip ``(B,)``.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import torch
from scipy.signal import oaconvolve
from scipy.special import i0

from automaster.effects._checks import (
    ParamLike, check_audio, check_sample_rate, clip_param, fast_fft_size, irfft, rfft,
)

WRAP_TOLERANCE = 1e-5  # -100 dB: what the inverse's wrapped-around tail may leave
FRACTIONAL_HALF_TAPS = 24  # time-domain inverse: windowed-sinc fractional delay, 48 taps
FRACTIONAL_KAISER_BETA = 9.0
MAX_INVERSE_GAIN = 0.99  # the IIR inverse needs |gain| < 1
# Extra zeros after the delayed copy: a fractional delay rings like a sinc (~1 / (pi n)), and
# what rings past the buffer's end wraps onto its start; 4096 samples keep that near -80 dB.
SINC_GUARD = 4096


def _params(x: torch.Tensor, delay_s: ParamLike, gain: ParamLike) -> tuple[torch.Tensor, torch.Tensor]:
    delay = clip_param("delay_s", delay_s, x.shape[0], x)
    gain_ = clip_param("gain", gain, x.shape[0], x)
    if not bool((delay >= 0).all()):
        raise ValueError(f"expected delay_s >= 0, got {delay.detach().cpu().tolist()}")
    return delay, gain_


def echo_transfer(sample_rate: float, delay_s: torch.Tensor, gain: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Frequency response ``1 + gain exp(-j 2 pi f delay_s)``, complex ``(B, 1, n_fft // 2 + 1)``."""
    # The phase reaches ~1e5 rad at the top bins: float32 would misplace the tap by ~1e-3.
    freqs = torch.fft.rfftfreq(n_fft, d=1.0 / sample_rate, dtype=torch.float64, device=delay_s.device)
    phase = -2.0 * math.pi * freqs * delay_s.double().unsqueeze(-1)  # (B, n_bins)
    tap = torch.polar(torch.ones_like(phase), phase).to(torch.promote_types(delay_s.dtype, torch.complex64))
    return (1.0 + tap * gain.unsqueeze(-1)).unsqueeze(1)


def delay_padding(sample_rate: float, delay_s: torch.Tensor) -> int:
    """Samples of zero padding that hold the longest delay and its fractional-delay ringing."""
    return int(math.ceil(float(delay_s.detach().max()) * sample_rate)) + SINC_GUARD


def inverse_padding(sample_rate: float, delay_s: torch.Tensor, gain: torch.Tensor) -> int:
    """Zero padding for the IIR inverse: enough delays that ``|gain|^k < WRAP_TOLERANCE``."""
    largest = float(gain.detach().abs().max())
    if largest == 0.0:
        return 0
    if largest > MAX_INVERSE_GAIN:
        raise ValueError(f"the echo inverse needs |gain| <= {MAX_INVERSE_GAIN}, got {largest:.4g}")
    taps = math.ceil(math.log(WRAP_TOLERANCE) / math.log(largest))
    return taps * int(math.ceil(float(delay_s.detach().max()) * sample_rate)) + SINC_GUARD


def echo(x: torch.Tensor, sample_rate: float, delay_s: ParamLike, gain: ParamLike) -> torch.Tensor:
    """Add one echo to ``x`` ``(B, C, T)`` -> ``(B, C, T)``."""
    check_audio(x)
    sample_rate = check_sample_rate(sample_rate)
    delay, gain_ = _params(x, delay_s, gain)
    n_fft = fast_fft_size(x.shape[-1] + delay_padding(sample_rate, delay))
    spec = rfft(x, n=n_fft) * echo_transfer(sample_rate, delay, gain_, n_fft)
    return irfft(spec, n=n_fft)[..., : x.shape[-1]]


def echo_inverse(y: torch.Tensor, sample_rate: float, delay_s: ParamLike, gain: ParamLike) -> torch.Tensor:
    """Remove the echo from ``y`` ``(B, C, T)`` with the same ``delay_s`` and ``gain``."""
    check_audio(y)
    sample_rate = check_sample_rate(sample_rate)
    delay, gain_ = _params(y, delay_s, gain)
    n_fft = fast_fft_size(y.shape[-1] + inverse_padding(sample_rate, delay, gain_))
    spec = rfft(y, n=n_fft) / echo_transfer(sample_rate, delay, gain_, n_fft)
    return irfft(spec, n=n_fft)[..., : y.shape[-1]]


@functools.lru_cache(maxsize=64)
def _fractional_taps(frac: float) -> np.ndarray:
    """Taps ``(2 H,)`` giving ``x(m + 1 - frac)`` from ``x[m - H + 1 .. m + H]`` (Kaiser-windowed sinc,
    unit gain at DC; a unit impulse when ``frac == 0``)."""
    half = FRACTIONAL_HALF_TAPS
    d = (1.0 - frac) - np.arange(-half + 1, half + 1)
    u = np.clip(1.0 - (d / half) ** 2, 0.0, None)
    h = np.sinc(d) * i0(FRACTIONAL_KAISER_BETA * np.sqrt(u)) / i0(FRACTIONAL_KAISER_BETA)
    return h / h.sum()


@numba.njit(cache=True, fastmath=True)
def _echo_inverse_iir(y, scale, gain, delay, taps, out):  # pragma: no cover - compiled
    """``out[c, n] = scale y[c, n] - gain x(n - delay - frac)`` with ``x = out`` (zeros before the
    start), the fractional delay by ``taps`` (tap ``k`` reads ``x[n - delay - H + k]``). Needs
    ``delay > H``: each output then reads only finished samples, a contiguous window of them
    (a dot product that vectorises)."""
    n_ch, n = y.shape
    n_taps = taps.size
    reach = delay + n_taps // 2  # tap 0 reads x[n - reach]
    for c in range(n_ch):
        x = out[c]
        src = y[c]
        for i in range(min(n, reach)):  # the start: taps before the signal read zeros
            acc = taps[0] - taps[0]
            for k in range(n_taps):
                j = i - reach + k
                if j >= 0:
                    acc += taps[k] * x[j]
            x[i] = scale * src[i] - gain * acc
        for i in range(reach, n):
            window = x[i - reach : i - reach + n_taps]
            acc = taps[0] - taps[0]
            for k in range(n_taps):
                acc += taps[k] * window[k]
            x[i] = scale * src[i] - gain * acc
    return out


def _comb(delay: float, feedback: float, dtype: np.dtype) -> np.ndarray:
    """FIR ``(reach + 1,)`` of ``y - feedback y(t - delay)`` (``delay`` in samples, >= 2 H), with the
    IIR's own fractional delay (its tap ``k`` reads ``y[n - reach + k]``: lag ``reach - k``)."""
    whole = int(math.floor(delay))
    taps = _fractional_taps(round(delay - whole, 6))
    reach = whole + FRACTIONAL_HALF_TAPS
    h = np.zeros(reach + 1, np.float64)
    h[0] = 1.0
    h[reach - np.arange(taps.size)] -= feedback * taps
    return h.astype(dtype)


def echo_inverse_time(y: np.ndarray, sample_rate: float, delay_s: float, gain: float, scale: float = 1.0,
                      feedback: float = 0.0) -> np.ndarray:
    """Time-domain twin of :func:`echo_inverse` for one clip ``(C, T)`` numpy (no autograd), also
    multiplying by ``scale`` (an output gain's inverse): the IIR ``x = scale y - gain x(t - delay)``
    with a 48-tap windowed-sinc fractional delay. It has no wrap-around and costs a fraction of the
    two long FFTs. Up to 20 kHz (at 44.1 kHz; 0.9 of Nyquist) it agrees with the exact
    band-limited division to ~-75 dB; above, the delay's response rolls off and the echo there is
    only partly removed. Needs ``delay_s * sample_rate >= 2 * FRACTIONAL_HALF_TAPS``. With
    ``feedback``, the feedback delay's pole is undone first (the module's docstring; ``gain``
    is then ``a``, the zero's gain)."""
    delay = delay_s * sample_rate
    whole = int(math.floor(delay))
    if whole < 2 * FRACTIONAL_HALF_TAPS:
        raise ValueError(f"the time-domain echo inverse needs a delay of >= {2 * FRACTIONAL_HALF_TAPS} samples, got {delay:.1f}")
    if feedback:
        y = oaconvolve(y, _comb(delay, feedback, y.dtype)[None], axes=-1)[:, : y.shape[-1]].astype(y.dtype)
    frac = round(delay - whole, 6)  # cache key; 1e-6 of a sample is far below the taps' own accuracy
    taps = _fractional_taps(frac).astype(y.dtype)
    out = np.empty_like(y)
    real = y.dtype.type
    return _echo_inverse_iir(y, real(scale), real(gain), whole, taps, out)


@numba.njit(cache=True, fastmath=True)
def _echo_inverse_iir_carry(y, scale, gain, taps, buf):  # pragma: no cover - compiled
    """:func:`_echo_inverse_iir` on one block ``y`` ``(C, n)`` of a longer signal: ``buf``
    ``(C, reach + n)`` holds the last ``reach`` outputs before the block (zeros at the start) and
    gets the block's outputs after them (output ``reach + i`` reads ``buf[i : i + n_taps]``)."""
    n_ch, n = y.shape
    n_taps = taps.size
    reach = buf.shape[1] - n
    for c in range(n_ch):
        x = buf[c]
        src = y[c]
        for i in range(n):
            window = x[i : i + n_taps]
            acc = taps[0] - taps[0]
            for k in range(n_taps):
                acc += taps[k] * window[k]
            x[reach + i] = scale * src[i] - gain * acc
    return buf


class _CarriedRecursion:
    """A recursion run on consecutive ``(C, n)`` blocks of one signal: ``history`` ``(C, reach)``
    holds its last outputs, which the next block's first outputs read."""

    dtype: np.dtype
    history: np.ndarray

    def _carry(self, y: np.ndarray, kernel) -> np.ndarray:
        """``kernel(y, buf)`` on ``buf`` ``(C, reach + n)`` = the history then the block's outputs."""
        reach = self.history.shape[1]
        buf = np.empty((y.shape[0], reach + y.shape[1]), self.dtype)
        buf[:, :reach] = self.history
        kernel(np.ascontiguousarray(y, dtype=self.dtype), buf)
        self.history = buf[:, -reach:].copy()
        return buf[:, reach:]


class EchoInverseStream(_CarriedRecursion):
    """:func:`echo_inverse_time` a block at a time: call it with consecutive ``(C, n)`` blocks of
    one signal; it carries the recursion's last outputs from block to block."""

    def __init__(self, channels: int, sample_rate: float, delay_s: float, gain: float, dtype=np.float32,
                 feedback: float = 0.0):
        delay = delay_s * sample_rate
        whole = int(math.floor(delay))
        if whole < 2 * FRACTIONAL_HALF_TAPS:
            raise ValueError(f"the time-domain echo inverse needs a delay of >= {2 * FRACTIONAL_HALF_TAPS} samples, got {delay:.1f}")
        # the feedback comb's FIR and the inputs it still needs from earlier blocks
        self.comb = _comb(delay, feedback, np.dtype(dtype)) if feedback else None
        self.inputs = np.zeros((channels, 0 if self.comb is None else self.comb.size - 1), dtype)
        self.taps = _fractional_taps(round(delay - whole, 6)).astype(dtype)
        self.gain, self.dtype = np.dtype(dtype).type(gain), np.dtype(dtype)
        self.history = np.zeros((channels, whole + self.taps.size // 2), dtype)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        if self.comb is not None:
            full = np.concatenate([self.inputs, np.asarray(y, dtype=self.dtype)], axis=1)
            self.inputs = full[:, full.shape[1] - self.inputs.shape[1]:].copy()
            y = oaconvolve(full, self.comb[None], mode="valid", axes=-1).astype(self.dtype)
        return self._carry(y, lambda block, buf: _echo_inverse_iir_carry(block, self.dtype.type(1.0), self.gain, self.taps, buf))


@numba.njit(cache=True, fastmath=True)
def _multi_tap_iir_carry(y, gains, taps, reaches, buf):  # pragma: no cover - compiled
    """``x(n) = y(n) - sum_j gains[j] x(n - delay_j)`` on one block ``y`` ``(C, n)``: ``buf``
    ``(C, R + n)`` holds the last ``R`` outputs before the block and gets the block's after them;
    echo ``j``'s fractional delay ``taps[j]`` reads ``buf[R + i - reaches[j] + k]`` (``reaches[j]``:
    its whole delay plus half the taps, more than the taps' length: only finished outputs)."""
    n_ch, n = y.shape
    n_echoes, n_taps = taps.shape
    first = buf.shape[1] - n
    for c in range(n_ch):
        x = buf[c]
        src = y[c]
        for i in range(n):
            acc = taps[0, 0] - taps[0, 0]
            for j in range(n_echoes):
                start = first + i - reaches[j]
                tap = taps[0, 0] - taps[0, 0]
                for k in range(n_taps):
                    tap += taps[j, k] * x[start + k]
                acc += gains[j] * tap
            x[first + i] = src[i] - acc
    return buf


class MultiEchoInverseStream(_CarriedRecursion):
    """The exact inverse of a multi-tap echo ``y = x + sum_i gains[i] x(t - delays_s[i])``, the IIR
    ``x = y - sum_i gains[i] x(t - delays_s[i])`` with :func:`echo_inverse_time`'s fractional delay,
    a block at a time (consecutive ``(C, n)`` blocks of one signal; the recursion carried).

    Raises:
        ValueError: a delay under ``2 * FRACTIONAL_HALF_TAPS`` samples, or ``sum |gains| >= 1`` (the
            sufficient condition for a stable inverse: the FIR has no zero on or outside the unit circle).
    """

    def __init__(self, channels: int, sample_rate: float, delays_s: list[float], gains: list[float], dtype=np.float32):
        delays = [d * sample_rate for d in delays_s]
        wholes = [int(math.floor(d)) for d in delays]
        if min(wholes) < 2 * FRACTIONAL_HALF_TAPS:
            raise ValueError(f"the time-domain echo inverse needs delays of >= {2 * FRACTIONAL_HALF_TAPS} samples, got {min(delays):.1f}")
        if sum(abs(g) for g in gains) >= 1.0:
            raise ValueError(f"the multi-tap echo inverse needs sum |gain| < 1, got {sum(abs(g) for g in gains):.3f}")
        self.dtype = np.dtype(dtype)
        self.taps = np.stack([_fractional_taps(round(d - w, 6)) for d, w in zip(delays, wholes)]).astype(self.dtype)
        self.reaches = np.array([w + FRACTIONAL_HALF_TAPS for w in wholes], np.int64)
        self.gains = np.array(gains, self.dtype)
        self.history = np.zeros((channels, int(self.reaches.max())), self.dtype)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        return self._carry(y, lambda block, buf: _multi_tap_iir_carry(block, self.gains, self.taps, self.reaches, buf))


def multi_echo_inverse_time(y: np.ndarray, sample_rate: float, delays_s: list[float], gains: list[float]) -> np.ndarray:
    """:class:`MultiEchoInverseStream` on one whole clip ``(C, T)``."""
    return MultiEchoInverseStream(y.shape[0], sample_rate, delays_s, gains, y.dtype)(y)
