"""Mel spectrograms equal to ``librosa.feature.melspectrogram`` (Slaney filterbank, power 2).

The filterbank itself is librosa's (``librosa.filters.mel``), so the two never drift apart;
the transform runs in torch, batched, on whatever device the audio is on.
"""

from __future__ import annotations

import functools

import librosa
import numba
import numpy as np
import torch

from automaster.dsp.constants import HOP_LENGTH, MODEL_RATE, N_FFT, N_MELS
from automaster.dsp.stft import stft


@functools.lru_cache(maxsize=8)
def _filterbank_np(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).astype(np.float32)


def mel_filterbank(
    sample_rate: int = MODEL_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Slaney-normalised mel filterbank ``(n_mels, n_fft // 2 + 1)`` as a float32 tensor."""
    return torch.from_numpy(_filterbank_np(sample_rate, n_fft, n_mels)).to(device)


def mel_from_power(power: torch.Tensor, sample_rate: int = MODEL_RATE, n_mels: int = N_MELS) -> torch.Tensor:
    """Mel power ``(..., n_mels, F)`` from a power spectrogram ``(..., n_fft // 2 + 1, F)``."""
    n_fft = 2 * (power.shape[-2] - 1)
    fb = mel_filterbank(sample_rate, n_fft, n_mels, device=power.device).to(power.dtype)
    return torch.matmul(fb, power)


def melspectrogram(
    x: torch.Tensor,
    sample_rate: int = MODEL_RATE,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    n_mels: int = N_MELS,
) -> torch.Tensor:
    """Mel power spectrogram of ``x`` ``(..., T)`` -> ``(..., n_mels, 1 + T // hop_length)``."""
    spec = stft(x, n_fft=n_fft, hop_length=hop_length)
    return mel_from_power(spec.real.square() + spec.imag.square(), sample_rate, n_mels)


@functools.lru_cache(maxsize=8)
def _filterbank_bands(sample_rate: int, n_fft: int, n_mels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filterbank as bands: ``(starts, stops, weights)``, band ``m`` covering bins
    ``starts[m] .. stops[m]`` with ``weights[m, : stops[m] - starts[m]]`` (the rest is zero)."""
    fb = _filterbank_np(sample_rate, n_fft, n_mels)
    starts = np.zeros(n_mels, np.int64)
    stops = np.zeros(n_mels, np.int64)
    for m, row in enumerate(fb):
        nz = np.flatnonzero(row)
        if nz.size:
            starts[m], stops[m] = nz[0], nz[-1] + 1
    weights = np.zeros((n_mels, max(1, int((stops - starts).max()))), np.float32)
    for m in range(n_mels):
        weights[m, : stops[m] - starts[m]] = fb[m, starts[m] : stops[m]]
    return starts, stops, weights


@numba.njit(cache=True, fastmath=True)
def _mel_db_pairs(pairs, starts, stops, weights, eps, out):  # pragma: no cover - compiled
    """``out[r, m, f] = 10 log10(max(sum_k w[m, k] |S[r, f, k]|^2, eps))`` from frame-major
    spectra given as float pairs ``(N, F, 2 K)``; only each band's non-zero bins are visited."""
    n_rows, n_frames, n_pairs = pairs.shape
    power = np.empty(n_pairs // 2, pairs.dtype)
    for r in range(n_rows):
        for f in range(n_frames):
            src = pairs[r, f]
            for k in range(power.size):
                power[k] = src[2 * k] * src[2 * k] + src[2 * k + 1] * src[2 * k + 1]
            for m in range(starts.size):
                acc = 0.0  # float64: a band sums up to a few hundred bins
                band = power[starts[m] : stops[m]]
                w = weights[m]
                for k in range(band.size):
                    acc += w[k] * band[k]
                out[r, m, f] = 10.0 * np.log10(max(acc, eps))


def mel_db_rows(spec: np.ndarray, sample_rate: int = MODEL_RATE, n_mels: int = N_MELS, eps: float = 1e-6) -> np.ndarray:
    """Mel spectrogram in dB ``(N, n_mels, F)`` of frame-major spectra ``(N, F, n_fft // 2 + 1)``
    (:func:`automaster.dsp.stft.stft_rows`): ``power_to_db(mel_from_power(|S|^2))`` in one pass,
    without the power spectrogram or the dense matrix product (the filterbank is ~98% zeros)."""
    if spec.ndim != 3 or not np.iscomplexobj(spec):
        raise ValueError(f"expected complex (N, F, n_bins) spectra, got {spec.dtype} of shape {spec.shape}")
    real = np.float32 if spec.dtype == np.complex64 else np.float64
    starts, stops, weights = _filterbank_bands(int(sample_rate), 2 * (spec.shape[-1] - 1), n_mels)
    out = np.empty((spec.shape[0], n_mels, spec.shape[1]), real)
    _mel_db_pairs(np.ascontiguousarray(spec).view(real), starts, stops, weights.astype(real), eps, out)
    return out


def mel_to_linear(mel_power: torch.Tensor, sample_rate: int = MODEL_RATE, n_fft: int = N_FFT) -> torch.Tensor:
    """Approximate linear power ``(..., n_fft // 2 + 1, F)`` from mel power ``(..., n_mels, F)``.

    Uses the filterbank's pseudo-inverse, clamped at zero (librosa's ``mel_to_stft`` solves a
    non-negative least-squares problem instead; this is its fast, batched counterpart).
    """
    pinv = _pinv(sample_rate, n_fft, mel_power.shape[-2]).to(mel_power.device, mel_power.dtype)
    return torch.matmul(pinv, mel_power).clamp_min(0.0)


@functools.lru_cache(maxsize=8)
def _pinv(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    return torch.from_numpy(np.linalg.pinv(_filterbank_np(sample_rate, n_fft, n_mels)).astype(np.float32))
