"""Phase reconstruction: fast Griffin–Lim in torch, batched, on the magnitude's device.

Shapes: magnitudes ``(..., n_fft // 2 + 1, F)`` (linear amplitude, not power, not dB); waveforms
``(..., T)``; mel power ``(..., n_mels, F)``. Framing is :mod:`automaster.dsp.stft`'s (periodic
Hann, ``center=True``), so ``F = 1 + T // hop_length``.

The algorithm is the fast Griffin–Lim of Perraudin, Balazs and Søndergaard (2013) with librosa's
update and parameterisation (``librosa.griffinlim``, ``momentum=0.99``): each iteration projects
onto consistent spectrograms (iSTFT then STFT), extrapolates with the previous projection, and
keeps the target magnitude::

    c_n   = STFT(iSTFT(M · e^{jφ}))
    φ     = angle(c_n − momentum / (1 + momentum) · c_{n−1})
"""

from __future__ import annotations

import math

import torch

from automaster.dsp.mel import SAMPLE_RATE, mel_to_linear
from automaster.dsp.stft import HOP_LENGTH, N_FFT, istft, n_frames, stft


def _check_magnitude(magnitude: torch.Tensor, n_fft: int) -> None:
    if not isinstance(magnitude, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor magnitude, got {type(magnitude).__name__}")
    if magnitude.is_complex() or not magnitude.is_floating_point():
        raise ValueError(f"expected a real floating-point magnitude, got dtype {magnitude.dtype}")
    if magnitude.dim() < 2 or magnitude.shape[-2] != n_fft // 2 + 1:
        raise ValueError(
            f"expected magnitude of shape (..., {n_fft // 2 + 1}, F) for n_fft={n_fft}, "
            f"got shape {tuple(magnitude.shape)}"
        )


def _output_length(n_spec_frames: int, length: int | None, hop_length: int) -> int:
    if length is None:
        return (n_spec_frames - 1) * hop_length
    if n_frames(length, hop_length) != n_spec_frames:
        raise ValueError(
            f"length={length} gives {n_frames(length, hop_length)} frames at hop {hop_length}, "
            f"but the magnitude has {n_spec_frames}"
        )
    return length


def _initial_phasor(
    magnitude: torch.Tensor, init_phase: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Unit-modulus complex tensor broadcastable to ``magnitude``."""
    complex_dtype = torch.complex128 if magnitude.dtype == torch.float64 else torch.complex64
    if init_phase is None:
        # One random phase per (bin, frame), shared by every leading index: an item's result then
        # depends only on its magnitude and the seed, not on its position in a batch.
        device = generator.device if generator is not None else torch.device("cpu")
        angle = torch.rand(magnitude.shape[-2:], generator=generator, device=device, dtype=magnitude.dtype)
        angle = angle.to(magnitude.device) * (2.0 * math.pi)
        return torch.polar(torch.ones_like(angle), angle)
    if not isinstance(init_phase, torch.Tensor):
        raise TypeError(f"expected init_phase as a torch.Tensor, got {type(init_phase).__name__}")
    try:
        fits = torch.broadcast_shapes(init_phase.shape, magnitude.shape) == magnitude.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"init_phase of shape {tuple(init_phase.shape)} does not broadcast to the magnitude's "
            f"{tuple(magnitude.shape)}"
        )
    init_phase = init_phase.to(magnitude.device)
    if init_phase.is_complex():
        z = init_phase.to(complex_dtype)
        mod = z.abs()
        # Bins where the given STFT is exactly zero have no phase: start them at angle 0.
        return torch.where(mod > 0, z / mod.clamp_min(torch.finfo(mod.dtype).tiny), torch.ones_like(z))
    angle = init_phase.to(magnitude.dtype)
    return torch.polar(torch.ones_like(angle), angle)


def griffin_lim(
    magnitude: torch.Tensor,
    n_iter: int = 32,
    momentum: float = 0.99,
    init_phase: torch.Tensor | None = None,
    length: int | None = None,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Waveform whose STFT magnitude approximates ``magnitude``.

    Args:
        magnitude: linear STFT magnitude ``(..., n_fft // 2 + 1, F)``, float32 or float64.
        n_iter: number of projection iterations (0 just inverts with the initial phase).
        momentum: fast Griffin–Lim momentum; 0 gives the classic algorithm. librosa's default 0.99.
        init_phase: starting phase, broadcastable to ``magnitude``. Either a **complex** STFT
            (e.g. the input's ``stft(x)``; only its angle is used, zero bins start at angle 0)
            or a **real** tensor of angles in radians. ``None`` (default): random phase, uniform
            in [0, 2π), like librosa's ``init="random"``.
        length: output length in samples; must give ``F`` frames. Default ``(F - 1) * hop_length``.
        n_fft, hop_length: STFT framing (periodic Hann, ``center=True``).
        generator: seeds the random initial phase. The draw has shape ``(n_bins, F)`` and is
            shared by all leading (batch, channel) indices, so a batched item equals its single
            run under the same seed. Without a generator, torch's global RNG is used.

    Returns:
        Waveform ``(..., length)`` on ``magnitude``'s device and in its dtype.
    """
    _check_magnitude(magnitude, n_fft)
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    if momentum < 0.0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    length = _output_length(magnitude.shape[-1], length, hop_length)

    alpha = momentum / (1.0 + momentum)
    spec = magnitude * _initial_phasor(magnitude, init_phase, generator)  # (..., K, F) complex
    previous: torch.Tensor | None = None
    for _ in range(n_iter):
        rebuilt = stft(istft(spec, length, n_fft, hop_length), n_fft, hop_length)
        update = rebuilt if previous is None or alpha == 0.0 else rebuilt - alpha * previous
        spec = magnitude * torch.sgn(update)  # z / |z| (0 where z == 0), like librosa's z / (|z| + tiny)
        previous = rebuilt
    return istft(spec, length, n_fft, hop_length)


def spectral_convergence(
    magnitude: torch.Tensor,
    waveform: torch.Tensor,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
) -> torch.Tensor:
    """``‖|STFT(x)| − M‖_F / ‖M‖_F`` per item: ``(..., K, F)`` and ``(..., T)`` -> ``(...)``.

    0 is a perfect reconstruction; 1 is as far as silence. ``waveform`` must give ``F`` frames.
    """
    _check_magnitude(magnitude, n_fft)
    if n_frames(waveform.shape[-1], hop_length) != magnitude.shape[-1]:
        raise ValueError(
            f"waveform of {waveform.shape[-1]} samples gives {n_frames(waveform.shape[-1], hop_length)} "
            f"frames, the magnitude has {magnitude.shape[-1]}"
        )
    rebuilt = stft(waveform.to(magnitude.dtype), n_fft, hop_length).abs()
    num = torch.linalg.vector_norm(rebuilt - magnitude, dim=(-2, -1))
    den = torch.linalg.vector_norm(magnitude, dim=(-2, -1)).clamp_min(torch.finfo(magnitude.dtype).tiny)
    return num / den


def mel_to_audio(
    mel_power: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    n_iter: int = 32,
    momentum: float = 0.99,
    length: int | None = None,
    init_phase: torch.Tensor | None = None,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Waveform ``(..., T)`` from a mel power spectrogram ``(..., n_mels, F)``.

    The linear magnitude is ``sqrt(mel_to_linear(mel_power))`` (the clamped pseudo-inverse of the
    Slaney filterbank, a fast batched stand-in for librosa's NNLS), then :func:`griffin_lim` with
    ``n_iter``, ``momentum``, ``init_phase`` and ``generator`` as documented there.
    """
    if mel_power.dim() < 2:
        raise ValueError(f"expected mel power of shape (..., n_mels, F), got shape {tuple(mel_power.shape)}")
    magnitude = mel_to_linear(mel_power, sample_rate, n_fft).sqrt()
    return griffin_lim(
        magnitude,
        n_iter=n_iter,
        momentum=momentum,
        init_phase=init_phase,
        length=length,
        n_fft=n_fft,
        hop_length=hop_length,
        generator=generator,
    )
