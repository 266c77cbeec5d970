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

Speed: on the CPU (no autograd) the iterations run frame-major on numpy arrays
(:func:`automaster.dsp.stft.rfft_frames` / :func:`automaster.dsp.stft.irfft_overlap_add`): per
iteration one inverse FFT and overlap-add into a reused signal buffer (the window envelope is
precomputed), then per block of frames one FFT whose result is consumed at once by a numba
kernel that does the momentum update and the magnitude projection in place. No full-size
temporary is allocated inside the loop. Other devices run the same algorithm in torch.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.fft
import torch

from automaster.dsp.mel import MODEL_RATE, _pinv, mel_to_linear
from automaster.dsp.stft import (
    HOP_LENGTH, N_FFT, _hann_np, _inverse_envelope, _overlap_add, istft, istft_rows, n_frames, padded_length,
    rfft_frames, stft, ROW_BLOCK,
)


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
    if magnitude.device.type == "cpu" and not magnitude.requires_grad:
        return _griffin_lim_rows(magnitude, n_iter, alpha, init_phase, length, n_fft, hop_length, generator)
    spec = magnitude * _initial_phasor(magnitude, init_phase, generator)  # (..., K, F) complex
    previous: torch.Tensor | None = None
    for _ in range(n_iter):
        rebuilt = stft(istft(spec, length, n_fft, hop_length), n_fft, hop_length)
        update = rebuilt if previous is None or alpha == 0.0 else rebuilt - alpha * previous
        spec = magnitude * torch.sgn(update)  # z / |z| (0 where z == 0), like librosa's z / (|z| + tiny)
        previous = rebuilt
    return istft(spec, length, n_fft, hop_length)


@numba.njit(cache=True, fastmath=True)
def _project(spec, previous, magnitude, rebuilt, alpha, first):  # pragma: no cover - compiled
    """In place, one block of frames (complex as float pairs, ``(b, 2 K)``; ``magnitude`` ``(b, K)``):
    ``spec = M · sgn(rebuilt − alpha · previous)`` (0 where that is 0), then ``previous = rebuilt``.

    ``alpha`` comes in the arrays' dtype (a float64 scalar would promote the float32 arithmetic).
    """
    n_rows, n_bins = magnitude.shape
    zero = alpha - alpha  # a typed zero: literals (0, 1e-30) would promote float32 math to float64
    for f in range(n_rows):
        s = spec[f]  # row slices: LLVM vectorises these loops, not 2-D indexing
        prev = previous[f]  # not read in the first iteration (it is uninitialised then)
        mag = magnitude[f]
        new = rebuilt[f]
        for k in range(n_bins):
            re = new[2 * k]
            im = new[2 * k + 1]
            ure = re if first else re - alpha * prev[2 * k]
            uim = im if first else im - alpha * prev[2 * k + 1]
            mod2 = ure * ure + uim * uim
            scale = mag[k] / np.sqrt(mod2) if mod2 > zero else zero
            s[2 * k] = ure * scale
            s[2 * k + 1] = uim * scale
            prev[2 * k] = re
            prev[2 * k + 1] = im


def _griffin_lim_rows(
    magnitude: torch.Tensor,
    n_iter: int,
    alpha: float,
    init_phase: torch.Tensor | None,
    length: int,
    n_fft: int,
    hop_length: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """:func:`griffin_lim` on the CPU, frame-major (see the module docstring); same arguments,
    ``alpha = momentum / (1 + momentum)``. A ``magnitude`` that is the transposed view of a
    frame-major array (as :func:`mel_to_audio` makes) is used without a copy."""
    lead, (n_bins, n_frames_) = magnitude.shape[:-2], magnitude.shape[-2:]
    n_items = math.prod(lead)
    real = np.float32 if magnitude.dtype != torch.float64 else np.float64
    rows = magnitude.detach().reshape(n_items, n_bins, n_frames_).transpose(1, 2)
    mag = np.ascontiguousarray(rows.numpy(), dtype=real)  # (N, F, K)
    phasor = _initial_phasor(magnitude, init_phase, generator)  # broadcastable to (..., K, F)
    if phasor.dim() == 2:  # one (K, F) phase shared by every item (the random start)
        phasor_rows = phasor.transpose(0, 1).numpy()[None]  # (1, F, K) view
    else:
        phasor = phasor.expand(*lead, n_bins, n_frames_).reshape(n_items, n_bins, n_frames_)
        phasor_rows = phasor.transpose(1, 2).numpy()
    spec = np.multiply(mag, phasor_rows, dtype=np.complex64 if real == np.float32 else np.complex128)  # (N, F, K)
    spec_f = spec.view(real)  # (N, F, 2K): complex as float pairs for the kernel
    previous = np.empty_like(spec_f)  # written by the first iteration before any read
    window = _hann_np(n_fft, np.dtype(real))
    # iSTFT's division by the window envelope, and its crop to `length` (then stft's zero padding)
    # as zeros: one scale applied while framing.
    scale = _inverse_envelope(n_frames_, n_fft, hop_length, np.dtype(real)).copy()
    pad = n_fft // 2
    scale[:pad] = 0.0
    scale[pad + length :] = 0.0
    signal = np.empty((n_items, padded_length(n_frames_, n_fft, hop_length)), real)  # centre-padded
    for it in range(n_iter):
        # iSTFT(spec) without its normalisation: inverse FFT, window, overlap-add per block.
        signal[:] = 0.0
        for row in range(n_items):
            for f0 in range(0, n_frames_, ROW_BLOCK):
                frames = scipy.fft.irfft(spec[row, f0 : f0 + ROW_BLOCK], n=n_fft, axis=-1)
                _overlap_add(frames, window, signal[row], f0 * hop_length, hop_length)
        first = it == 0

        def project(row: int, f0: int, rebuilt: np.ndarray) -> None:
            b = rebuilt.shape[0]
            _project(spec_f[row, f0 : f0 + b], previous[row, f0 : f0 + b], mag[row, f0 : f0 + b],
                     rebuilt.view(real), real(alpha), first)

        rfft_frames(signal, n_frames_, n_fft, hop_length, consume=project, scale=scale)
    out = istft_rows(spec, length, n_fft, hop_length)
    return torch.from_numpy(out).reshape(*lead, length)


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
    sample_rate: int = MODEL_RATE,
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
    if mel_power.device.type == "cpu" and not mel_power.requires_grad:
        # mel_to_linear computed frame-major, (..., F, n_mels) @ pinv^T, and handed over as its
        # transposed view: the CPU Griffin-Lim works frame-major and then needs no copy.
        pinv = _pinv(sample_rate, n_fft, mel_power.shape[-2]).to(mel_power.dtype)  # (K, n_mels)
        magnitude = torch.matmul(mel_power.transpose(-1, -2), pinv.T).clamp_min_(0.0).sqrt_().transpose(-1, -2)
    else:
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
