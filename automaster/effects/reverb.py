"""Noise reverb (exponentially decaying, energy-normalised impulse response) and its inverse.

Forward: ``h = n(t) exp(-3 ln(10) t / rt60_s)`` with white noise ``n`` drawn per channel (so the
channels are decorrelated) from the caller's ``torch.Generator``, normalised to ``sum h^2 = 1``;
``y = (1 - wet) x + wet (x * h)`` by FFT convolution, output length = input length.
Differentiable w.r.t. ``rt60_s`` and ``wet`` (the noise is fixed).

Inverse: decay-model spectral suppression in the STFT domain (Lebart / Habets style). With
``P = |Y|^2``, the reverberant power is predicted from earlier frames by the exponential decay at
``rt60_s`` (a one-pole over frames, ``a = exp(-2 delta hop / sr)``, ``delta = 3 ln 10 / rt60``),
scaled by the wet share; a Wiener-like gain ``max(1 - P_rev / P, floor)`` keeps the dry part,
which is then rescaled by ``1 / (1 - wet)``. ``wet = 0`` is the identity.

Shapes: audio ``(B, C, T)``; ``rt60_s`` and ``wet`` per clip ``(B,)``; spectra
``(B, C, n_bins, F)``; impulse responses ``(B, C, L)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
import torch

from automaster.dsp.stft import HOP_LENGTH, istft, stft
from automaster.effects._checks import (
    ParamLike, check_audio, check_sample_rate, clip_param, fast_fft_size, irfft, needs_grad, rfft,
)
from automaster.effects.params import BY_NAME

RT60_MAX_S = BY_NAME["reverb_rt60_s"].high  # sets the impulse-response length (and the noise drawn)
SUPPRESSION_FLOOR = 0.3  # about -10 dB: the most a bin is attenuated (tuned on music: log-mel error)
WET_MAX = 0.95  # the inverse divides by 1 - wet
POWER_EPS = 1e-12  # keeps the gain finite in digital silence

Generators = torch.Generator | Sequence[torch.Generator] | None



# ----------------------------------------------------------------------------- decay recursion
@numba.njit(cache=True)
def _decay_forward(p, b):  # pragma: no cover - compiled
    rows, n = p.shape
    s = np.empty_like(p)
    for r in range(rows):
        br = b[r]  # b = 1 - a and the state in p's dtype: float32 runs twice as fast
        state = p[r, 0] * 0
        for i in range(n):
            state += br * (p[r, i] - state)
            s[r, i] = state
    return s


@numba.njit(cache=True)
def _decay_backward(p, s, a, grad_s):  # pragma: no cover - compiled
    rows, n = p.shape
    grad_p = np.empty_like(p)
    grad_a = np.zeros(rows)
    for r in range(rows):
        ar = a[r]
        acc = 0.0
        g = 0.0
        for i in range(n - 1, -1, -1):
            acc += grad_s[r, i]
            prev = s[r, i - 1] if i > 0 else 0.0
            g += acc * (prev - p[r, i])
            grad_p[r, i] = (1.0 - ar) * acc
            acc *= ar
        grad_a[r] = g
    return grad_p, grad_a


@numba.njit(cache=True)
def _suppression_mask(p, decay, share, inv_dry, floor):  # pragma: no cover - compiled
    """No-autograd twin of the torch mask formula in :func:`reverb_inverse_mask`, one pass."""
    rows, n = p.shape
    mask = np.empty_like(p)
    for r in range(rows):
        a = decay[r]
        state = 0.0
        for i in range(n):
            v = p[r, i]
            gain = 1.0 - share[r] * a * state / (v + POWER_EPS)
            mask[r, i] = max(gain, floor) * inv_dry[r]
            state += (1.0 - a) * (v - state)
    return mask


class _Decay(torch.autograd.Function):
    """``s[i] = a s[i-1] + (1 - a) p[i]`` along rows, numba on the CPU, exact backward."""

    @staticmethod
    def forward(ctx, power: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        p = power.detach().cpu().contiguous().numpy()
        a = coef.detach().cpu().double().numpy()
        s = _decay_forward(p, (1.0 - a).astype(p.dtype))
        ctx.arrays = (p, s, a)
        ctx.meta = (power.device, coef.dtype)
        return torch.from_numpy(s).to(power.device)

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor):
        p, s, a = ctx.arrays
        device, dtype = ctx.meta
        g = grad_s.detach().cpu().contiguous().numpy().astype(p.dtype, copy=False)
        grad_p, grad_a = _decay_backward(p, s, a, g)
        return torch.from_numpy(grad_p).to(device), torch.from_numpy(grad_a).to(device, dtype)


def decay_smooth(power: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Exponential smoothing ``(R, N)`` along the last axis with per-row coefficients ``(R,)``."""
    return _Decay.apply(power, coef)


def ir_length(sample_rate: float, rt60_s: torch.Tensor | None = None) -> int:
    """Impulse-response length in samples: ``RT60_MAX_S`` (or the longest ``rt60_s``) of audio."""
    longest = RT60_MAX_S if rt60_s is None else max(RT60_MAX_S, float(rt60_s.detach().max()))
    return int(math.ceil(longest * sample_rate))


def reverb_noise(batch: int, channels: int, length: int, generator: Generators = None) -> torch.Tensor:
    """White noise ``(B, C, length)`` for the impulse responses.

    ``generator`` is one generator for the batch or one per item (so a batched item equals its
    single run when each track has its own seeded generator).
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(batch, channels, length, generator=generator)
    if len(generator) != batch:
        raise ValueError(f"expected one generator per batch item ({batch}), got {len(generator)}")
    return torch.cat([torch.randn(1, channels, length, generator=g) for g in generator])


def reverb_impulse_response(
    sample_rate: float, rt60_s: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Energy-normalised decaying-noise impulse responses ``(B, C, L)`` from noise ``(B, C, L)``.

    Args:
        sample_rate: Hz.
        rt60_s: ``(B,)`` time in seconds for the envelope to fall by 60 dB.
        noise: ``(B, C, L)`` white noise (see :func:`reverb_noise`).
    """
    t = torch.arange(noise.shape[-1], device=noise.device, dtype=noise.dtype) / sample_rate
    envelope = torch.exp(-3.0 * math.log(10.0) * t / rt60_s.to(noise.dtype).unsqueeze(-1))  # (B, L)
    h = noise * envelope.unsqueeze(1)
    return h * torch.rsqrt(h.square().sum(dim=-1, keepdim=True))


def _params(x: torch.Tensor, rt60_s: ParamLike, wet: ParamLike) -> tuple[torch.Tensor, torch.Tensor]:
    rt60 = clip_param("rt60_s", rt60_s, x.shape[0], x)
    wet_ = clip_param("wet", wet, x.shape[0], x)
    if not bool((rt60 > 0).all()):
        raise ValueError(f"expected positive rt60_s, got {rt60.detach().cpu().tolist()}")
    return rt60, wet_


def reverb_transfer(
    sample_rate: float, rt60_s: torch.Tensor, wet: torch.Tensor, channels: int, n_fft: int,
    generator: Generators = None, noise: torch.Tensor | None = None, device=None,
) -> torch.Tensor:
    """Frequency response ``(1 - wet) + wet H`` ``(B, C, n_fft // 2 + 1)`` (complex) of the reverb.

    ``n_fft`` must be at least the signal length plus the impulse-response length, for a linear
    (not circular) convolution. ``noise`` overrides drawing from ``generator``.
    """
    batch = rt60_s.shape[0]
    if noise is None:
        noise = reverb_noise(batch, channels, ir_length(sample_rate, rt60_s), generator)
    if noise.ndim != 3 or noise.shape[:2] != (batch, channels):
        raise ValueError(f"expected reverb noise of shape ({batch}, {channels}, L), got {tuple(noise.shape)}")
    h = reverb_impulse_response(sample_rate, rt60_s, noise.to(device=rt60_s.device, dtype=rt60_s.dtype))
    w = wet.view(batch, 1, 1)
    return (1.0 - w) + w * rfft(h, n=n_fft)


def reverb(
    x: torch.Tensor,
    sample_rate: float,
    rt60_s: ParamLike,
    wet: ParamLike,
    generator: Generators = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reverberate ``x`` ``(B, C, T)`` -> ``(B, C, T)``.

    Args:
        rt60_s: ``(B,)`` decay time to -60 dB in seconds.
        wet: ``(B,)`` wet share of the mix in [0, 1].
        generator: seeds the impulse-response noise (one, or one per batch item).
        noise: ``(B, C, L)`` noise to use instead of drawing it.
    """
    check_audio(x)
    sample_rate = check_sample_rate(sample_rate)
    rt60, wet_ = _params(x, rt60_s, wet)
    length = noise.shape[-1] if noise is not None else ir_length(sample_rate, rt60)
    n_fft = fast_fft_size(x.shape[-1] + length)
    transfer = reverb_transfer(sample_rate, rt60, wet_, x.shape[1], n_fft, generator, noise, x.device)
    return irfft(rfft(x, n=n_fft) * transfer, n=n_fft)[..., : x.shape[-1]]


def suppression_constants(sample_rate: float, rt60_s: torch.Tensor, wet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(decay, share)`` ``(B,)`` of the suppression: the energy decay per hop and the wet share
    of the power. Raises ValueError when ``wet > WET_MAX`` (the inverse divides by ``1 - wet``)."""
    if not bool((wet <= WET_MAX).all()):
        raise ValueError(f"expected wet <= {WET_MAX} for the inverse, got {wet.detach().cpu().tolist()}")
    # Energy decay per hop of an exponential decay that falls 60 dB in rt60 seconds.
    decay = torch.exp(-6.0 * math.log(10.0) * HOP_LENGTH / (rt60_s * sample_rate))  # (B,)
    # Reverberant power: the decayed past (earlier frames only), scaled by the wet share of the
    # power (the dry share is (1 - wet)^2, the energy-normalised wet share wet^2).
    share = wet.square() / ((1.0 - wet).square() + wet.square())  # (B,)
    return decay, share


def reverb_inverse_mask(power: torch.Tensor, sample_rate: float, rt60_s: ParamLike, wet: ParamLike) -> torch.Tensor:
    """Real suppression mask ``(B, C, n_bins, F)`` for the STFT power ``|Y|^2`` of reverberant audio.

    Multiplying the STFT by it estimates the dry STFT (includes the ``1 / (1 - wet)`` rescale).
    """
    if power.ndim != 4:
        raise ValueError(f"expected (B, C, n_bins, F) power spectrogram, got shape {tuple(power.shape)}")
    sample_rate = check_sample_rate(sample_rate)
    batch, channels, n_bins, n_frames = power.shape
    rt60, wet_ = _params(power, rt60_s, wet)
    decay, share = suppression_constants(sample_rate, rt60, wet_)
    if power.device.type == "cpu" and not needs_grad(power, rt60, wet_):
        # Same formula in one numba pass: the chain's inverse runs this on ~5M bins per channel.
        per_row = lambda v: v.detach().double().repeat_interleave(channels * n_bins).numpy()  # noqa: E731
        mask = _suppression_mask(power.detach().contiguous().reshape(-1, n_frames).numpy(), per_row(decay),
                                 per_row(share), per_row(1.0 / (1.0 - wet_)), SUPPRESSION_FLOOR)
        return torch.from_numpy(mask).view_as(power)
    rows = decay.repeat_interleave(channels * n_bins)  # one coefficient per (b, c, bin) sequence
    smoothed = decay_smooth(power.reshape(-1, n_frames), rows).view_as(power)
    late = torch.nn.functional.pad(smoothed[..., :-1], (1, 0)) * decay.view(batch, 1, 1, 1)
    gain = (1.0 - share.view(batch, 1, 1, 1) * late / (power + POWER_EPS)).clamp_min(SUPPRESSION_FLOOR)
    return gain / (1.0 - wet_.view(batch, 1, 1, 1))


def reverb_inverse_stft(spec: torch.Tensor, sample_rate: float, rt60_s: ParamLike, wet: ParamLike) -> torch.Tensor:
    """Apply :func:`reverb_inverse_mask` to a complex STFT ``(B, C, n_bins, F)``."""
    return spec * reverb_inverse_mask(spec.real.square() + spec.imag.square(), sample_rate, rt60_s, wet)


def reverb_inverse(y: torch.Tensor, sample_rate: float, rt60_s: ParamLike, wet: ParamLike) -> torch.Tensor:
    """Undo (approximately) :func:`reverb` on ``y`` ``(B, C, T)`` with the same ``rt60_s``, ``wet``."""
    check_audio(y)
    return istft(reverb_inverse_stft(stft(y), sample_rate, rt60_s, wet), y.shape[-1])
