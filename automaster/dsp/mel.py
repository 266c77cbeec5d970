"""Mel spectrograms equal to ``librosa.feature.melspectrogram`` (Slaney filterbank, power 2).

The filterbank itself is librosa's (``librosa.filters.mel``), so the two never drift apart;
the transform runs in torch, batched, on whatever device the audio is on.
"""

from __future__ import annotations

import functools

import librosa
import numpy as np
import torch

from automaster.dsp.stft import HOP_LENGTH, N_FFT, stft

SAMPLE_RATE = 44100
N_MELS = 128


@functools.lru_cache(maxsize=8)
def _filterbank_np(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).astype(np.float32)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Slaney-normalised mel filterbank ``(n_mels, n_fft // 2 + 1)`` as a float32 tensor."""
    return torch.from_numpy(_filterbank_np(sample_rate, n_fft, n_mels)).to(device)


def mel_from_power(power: torch.Tensor, sample_rate: int = SAMPLE_RATE, n_mels: int = N_MELS) -> torch.Tensor:
    """Mel power ``(..., n_mels, F)`` from a power spectrogram ``(..., n_fft // 2 + 1, F)``."""
    n_fft = 2 * (power.shape[-2] - 1)
    fb = mel_filterbank(sample_rate, n_fft, n_mels, device=power.device).to(power.dtype)
    return torch.matmul(fb, power)


def melspectrogram(
    x: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    n_mels: int = N_MELS,
) -> torch.Tensor:
    """Mel power spectrogram of ``x`` ``(..., T)`` -> ``(..., n_mels, 1 + T // hop_length)``."""
    spec = stft(x, n_fft=n_fft, hop_length=hop_length)
    return mel_from_power(spec.real.square() + spec.imag.square(), sample_rate, n_mels)


def mel_to_linear(mel_power: torch.Tensor, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> torch.Tensor:
    """Approximate linear power ``(..., n_fft // 2 + 1, F)`` from mel power ``(..., n_mels, F)``.

    Uses the filterbank's pseudo-inverse, clamped at zero (librosa's ``mel_to_stft`` solves a
    non-negative least-squares problem instead; this is its fast, batched counterpart).
    """
    pinv = _pinv(sample_rate, n_fft, mel_power.shape[-2]).to(mel_power.device, mel_power.dtype)
    return torch.matmul(pinv, mel_power).clamp_min(0.0)


@functools.lru_cache(maxsize=8)
def _pinv(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    return torch.from_numpy(np.linalg.pinv(_filterbank_np(sample_rate, n_fft, n_mels)).astype(np.float32))
