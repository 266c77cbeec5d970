"""STFT and inverse STFT in torch, matching librosa's defaults.

Shapes: waveforms ``(..., T)``; complex spectrograms ``(..., n_fft // 2 + 1, F)`` with
``F = 1 + T // hop_length`` frames (``center=True``, zero padding, periodic Hann window), the
same framing as ``librosa.stft`` and ``librosa.feature.melspectrogram``.
"""

from __future__ import annotations

import functools

import torch

N_FFT = 2048
HOP_LENGTH = 512


@functools.lru_cache(maxsize=16)
def _hann(n_fft: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(n_fft, periodic=True, device=device, dtype=dtype)


def hann_window(n_fft: int, like: torch.Tensor) -> torch.Tensor:
    """The periodic Hann window on ``like``'s device, in its real dtype (cached)."""
    dtype = like.real.dtype if like.is_complex() else like.dtype
    return _hann(n_fft, str(like.device), dtype)


def n_frames(n_samples: int, hop_length: int = HOP_LENGTH) -> int:
    """Number of STFT frames of a signal of ``n_samples`` with ``center=True``."""
    return 1 + n_samples // hop_length


def stft(x: torch.Tensor, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> torch.Tensor:
    """Complex STFT of ``x`` ``(..., T)`` -> ``(..., n_fft // 2 + 1, F)``."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    spec = torch.stft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        window=hann_window(n_fft, flat),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(
    spec: torch.Tensor, length: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH
) -> torch.Tensor:
    """Inverse of :func:`stft`: ``(..., n_fft // 2 + 1, F)`` -> ``(..., length)``."""
    lead = spec.shape[:-2]
    flat = spec.reshape(-1, *spec.shape[-2:])
    x = torch.istft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        window=hann_window(n_fft, flat),
        center=True,
        length=length,
    )
    return x.reshape(*lead, length)


def fft_frequencies(sample_rate: float, n_fft: int = N_FFT, device=None) -> torch.Tensor:
    """Centre frequency in Hz of each STFT bin, ``(n_fft // 2 + 1,)``."""
    return torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, device=device)
