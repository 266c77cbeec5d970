"""Two-bell EQ in the STFT domain (the thesis formula) and its exact inverse.

Each bell is ``R(f, t) = 1 + G(t) exp(-(f - fc(t))^2 / (2 (fc(t) / Q(t))^2))`` with
``G = 10^(gain_db / 20) - 1``, so at ``f = fc`` it applies exactly ``gain_db``; the response is the
product of the low and the high bell. Parameters are per-frame trajectories ``(B, F)`` at any
``F`` (resampled by time to the STFT frames of the clip); audio is ``(B, C, T)``; spectra are
complex ``(B, C, n_fft // 2 + 1, F_stft)``. Every channel gets the same response.

Each bell lies between 1 and ``10^(gain_db / 20)``, so ``R > 0`` for any finite gain and ``1 / R``
is the exact inverse in the STFT domain; through an iSTFT/STFT round trip it is exact up to the
tiny inconsistency a smooth, time-varying mask introduces.
"""

from __future__ import annotations

import math

import torch

from automaster.dsp.stft import fft_frequencies, istft, stft
from automaster.effects._checks import ParamLike, check_audio, check_sample_rate, frame_param, needs_grad


def _bell(freqs: torch.Tensor, gain_db: torch.Tensor, fc_hz: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """One bell ``(B, n_bins, F)`` from frequencies ``(n_bins, 1)`` and trajectories ``(B, 1, F)``
    (or ``(B, F, n_bins)`` from ``(1, n_bins)`` and ``(B, F, 1)``: only broadcasting is used)."""
    g = torch.pow(10.0, gain_db / 20.0) - 1.0
    # (f - fc) / (fc / Q) / sqrt(2) = (f Q / fc - Q) / sqrt(2): one fused op over the full grid.
    scale = math.sqrt(0.5)
    z = torch.addcmul(-q * scale, freqs, q * scale / fc_hz)
    # Far from the centre exp(-z^2) would underflow into denormals, which are ~10x slower to
    # compute and multiply; exp(-80) ~ 2e-35 is already nothing.
    if needs_grad(g, z):
        return torch.addcmul(torch.ones((), dtype=z.dtype, device=z.device), g, torch.exp(-z.square().clamp_max(80.0)))
    # Without autograd, reuse one buffer: the grid is large and every fresh tensor costs.
    return z.square_().clamp_max_(80.0).neg_().exp_().mul_(g).add_(1.0)


def eq_response(
    sample_rate: float,
    n_bins: int,
    n_frames: int,
    low_gain_db: ParamLike,
    low_fc_hz: ParamLike,
    low_q: ParamLike,
    high_gain_db: ParamLike,
    high_fc_hz: ParamLike,
    high_q: ParamLike,
    batch: int | None = None,
    frames_first: bool = False,
) -> torch.Tensor:
    """Real response ``R`` of the two bells, ``(B, n_bins, n_frames)``.

    Args:
        sample_rate: Hz; bins span 0 .. sample_rate / 2.
        n_bins: ``n_fft // 2 + 1``.
        n_frames: STFT frames to resample the trajectories to.
        low_gain_db, high_gain_db: bell gains in dB at their centres, ``(B, F)`` or ``(B,)``.
        low_fc_hz, high_fc_hz: centre frequencies in Hz.
        low_q, high_q: quality factors (the bell's standard deviation is ``fc / Q`` Hz).
        batch: ``B``; by default taken from the first parameter given as a tensor.
        frames_first: return ``(B, n_frames, n_bins)`` instead (frame-major, for
            :func:`automaster.dsp.stft.stft_rows` spectra); the same values.
    """
    check_sample_rate(sample_rate)
    values = (low_gain_db, low_fc_hz, low_q, high_gain_db, high_fc_hz, high_q)
    ref = next((v for v in values if isinstance(v, torch.Tensor) and v.ndim > 0), None)
    if batch is None:
        if ref is None:
            raise ValueError("eq_response needs batch= when no parameter is a (B,) or (B, F) tensor")
        batch = ref.shape[0]
    like = ref if ref is not None and ref.is_floating_point() else torch.zeros(())

    def traj(name: str, v: ParamLike) -> torch.Tensor:
        t = frame_param(name, v, batch, n_frames, like)
        return t.unsqueeze(-1) if frames_first else t.unsqueeze(1)  # (B, F, 1) or (B, 1, F)

    freqs = fft_frequencies(sample_rate, 2 * (n_bins - 1), device=like.device).to(like.dtype)
    freqs = freqs.unsqueeze(0) if frames_first else freqs.unsqueeze(-1)  # (1, n_bins) or (n_bins, 1)
    low = _bell(freqs, traj("low_gain_db", low_gain_db), traj("low_fc_hz", low_fc_hz), traj("low_q", low_q))
    high = _bell(freqs, traj("high_gain_db", high_gain_db), traj("high_fc_hz", high_fc_hz), traj("high_q", high_q))
    return low * high if low.requires_grad or high.requires_grad else low.mul_(high)


def _check_spec(spec: torch.Tensor) -> torch.Tensor:
    if not isinstance(spec, torch.Tensor) or spec.ndim != 4 or not spec.is_complex():
        shape = tuple(spec.shape) if isinstance(spec, torch.Tensor) else type(spec).__name__
        raise ValueError(f"expected complex (B, C, n_bins, F) spectrogram, got {shape}")
    return spec


def eq_stft(
    spec: torch.Tensor,
    sample_rate: float,
    low_gain_db: ParamLike,
    low_fc_hz: ParamLike,
    low_q: ParamLike,
    high_gain_db: ParamLike,
    high_fc_hz: ParamLike,
    high_q: ParamLike,
    inverse: bool = False,
) -> torch.Tensor:
    """Apply the EQ (or with ``inverse=True`` its inverse) to a complex STFT ``(B, C, n_bins, F)``.

    Lets a caller that already has the STFT (e.g. for a mel spectrogram) skip recomputing it.
    """
    _check_spec(spec)
    r = eq_response(
        sample_rate, spec.shape[-2], spec.shape[-1],
        low_gain_db, low_fc_hz, low_q, high_gain_db, high_fc_hz, high_q, batch=spec.shape[0],
    ).to(spec.device, spec.real.dtype).unsqueeze(1)  # (B, 1, n_bins, F): the same response for every channel
    return spec / r if inverse else spec * r


def eq_inverse_stft(spec: torch.Tensor, sample_rate: float, *args: ParamLike, **kwargs: ParamLike) -> torch.Tensor:
    """Inverse of :func:`eq_stft` (divides by the response); same parameters."""
    return eq_stft(spec, sample_rate, *args, **kwargs, inverse=True)


def eq(
    x: torch.Tensor,
    sample_rate: float,
    low_gain_db: ParamLike,
    low_fc_hz: ParamLike,
    low_q: ParamLike,
    high_gain_db: ParamLike,
    high_fc_hz: ParamLike,
    high_q: ParamLike,
) -> torch.Tensor:
    """Two-bell EQ of audio ``x`` ``(B, C, T)`` -> ``(B, C, T)``; parameters as in :func:`eq_response`."""
    check_audio(x)
    spec = eq_stft(stft(x), sample_rate, low_gain_db, low_fc_hz, low_q, high_gain_db, high_fc_hz, high_q)
    return istft(spec, x.shape[-1])


def eq_inverse(
    y: torch.Tensor,
    sample_rate: float,
    low_gain_db: ParamLike,
    low_fc_hz: ParamLike,
    low_q: ParamLike,
    high_gain_db: ParamLike,
    high_fc_hz: ParamLike,
    high_q: ParamLike,
) -> torch.Tensor:
    """Undo :func:`eq` on ``y`` ``(B, C, T)`` with the same parameters (divides by the response)."""
    check_audio(y)
    spec = eq_inverse_stft(stft(y), sample_rate, low_gain_db, low_fc_hz, low_q, high_gain_db, high_fc_hz, high_q)
    return istft(spec, y.shape[-1])
