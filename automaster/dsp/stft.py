"""STFT and inverse STFT in torch, matching librosa's defaults, and a frame-major CPU twin.

Shapes: waveforms ``(..., T)``; complex spectrograms ``(..., n_fft // 2 + 1, F)`` with
``F = 1 + T // hop_length`` frames (``center=True``, zero padding, periodic Hann window), the
same framing as ``librosa.stft`` and ``librosa.feature.melspectrogram``.

:func:`stft_rows` / :func:`istft_rows` compute the same transforms on numpy arrays, frame-major:
``(N, T)`` <-> ``(N, F, n_fft // 2 + 1)`` (one row per frame, bins contiguous). They run scipy's
pocketfft a block of frames at a time (the blocks stay in cache and no large temporary is
allocated) and overlap-add in numba: faster than ``torch.stft``/``torch.istft`` on one CPU thread
(BENCHMARKS.md), and the frame-major layout lets recursions over frames (reverb suppression) run
vectorised over bins. For no-autograd CPU work (the inverse effects chain, Griffin-Lim).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import scipy.fft
import torch

from automaster.dsp.constants import HOP_LENGTH, MODEL_RATE, N_FFT  # noqa: F401 (re-exported)

ROW_BLOCK = 128  # frames per FFT call in the frame-major transforms (~1 MB per block: cache-sized)


@functools.lru_cache(maxsize=16)
def _hann(n_fft: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    # Never an inference tensor: a window cached under inference_mode (mastering) must still be
    # usable where autograd records (training).
    with torch.inference_mode(False):
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


# ------------------------------------------------------------------ frame-major (numpy, CPU)


@functools.lru_cache(maxsize=8)
def _hann_np(n_fft: int, dtype: np.dtype) -> np.ndarray:
    return _hann(n_fft, "cpu", torch.float64).numpy().astype(dtype)


@functools.lru_cache(maxsize=16)
def _inverse_envelope(frames: int, n_fft: int, hop_length: int, dtype: np.dtype) -> np.ndarray:
    """``1 / sum of squared windows`` over the padded signal (0 where no window reaches)."""
    w2 = _hann_np(n_fft, np.dtype(np.float64)) ** 2
    env = np.zeros((frames - 1) * hop_length + n_fft + hop_length)
    for start in range(0, n_fft, hop_length):  # window piece [start, start + hop) of every frame
        piece = w2[start : start + hop_length]
        span = env[start : start + frames * hop_length].reshape(frames, hop_length)
        span[:, : piece.size] += piece
    env = env[: (frames - 1) * hop_length + n_fft]
    with np.errstate(divide="ignore"):
        inv = np.where(env > 1e-11, 1.0 / env, 0.0)
    inv.flags.writeable = False
    return inv.astype(dtype)


@numba.njit(cache=True, fastmath=True)
def _overlap_add(frames, window, out, start, hop):  # pragma: no cover - compiled
    """``out[start + f * hop + i] += window[i] * frames[f, i]``."""
    n_fft = window.size
    for f in range(frames.shape[0]):
        base = start + f * hop
        y = out[base : base + n_fft]
        x = frames[f]
        for i in range(n_fft):
            y[i] += window[i] * x[i]


@numba.njit(cache=True, fastmath=True)
def _window_frames(signal, scale, f0, hop, window, out):  # pragma: no cover - compiled
    """``out[f, i] = window[i] * signal[p] * scale[p]``, ``p = (f0 + f) * hop + i`` (``scale``
    may be empty: no scale)."""
    n_fft = window.size
    scaled = scale.size > 0
    for f in range(out.shape[0]):
        base = (f0 + f) * hop
        x = signal[base : base + n_fft]  # slices (not base + i indexing) let LLVM vectorise
        row = out[f]
        if scaled:
            c = scale[base : base + n_fft]
            for i in range(n_fft):
                row[i] = window[i] * x[i] * c[i]
        else:
            for i in range(n_fft):
                row[i] = window[i] * x[i]


def padded_length(n_frames_: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> int:
    """Samples of the centre-padded signal that ``n_frames_`` frames span."""
    return (n_frames_ - 1) * hop_length + n_fft


def rfft_frames(
    padded: np.ndarray, n_frames_: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH, consume=None,
    scale: np.ndarray | None = None,
) -> np.ndarray | None:
    """Frame-major STFT of an already centre-padded signal ``(N, L)`` -> ``(N, F, n_bins)``.

    With ``consume``, nothing is returned: ``consume(row, f0, block)`` receives each block of
    spectra ``(b, n_bins)`` (frames ``f0 .. f0 + b``) instead, e.g. to update it in place.
    ``scale`` ``(L,)``, if given, multiplies the signal first (fused into the framing).
    """
    n_rows = padded.shape[0]
    window = _hann_np(n_fft, padded.dtype)
    scale = np.empty(0, padded.dtype) if scale is None else scale.astype(padded.dtype, copy=False)
    out = None
    if consume is None:
        cdtype = np.complex64 if padded.dtype == np.float32 else np.complex128
        out = np.empty((n_rows, n_frames_, n_fft // 2 + 1), cdtype)
    buf = np.empty((min(ROW_BLOCK, n_frames_), n_fft), padded.dtype)
    for row in range(n_rows):
        for f0 in range(0, n_frames_, ROW_BLOCK):
            b = min(ROW_BLOCK, n_frames_ - f0)
            _window_frames(padded[row], scale, f0, hop_length, window, buf[:b])
            spec = scipy.fft.rfft(buf[:b], axis=-1, overwrite_x=True)
            if consume is None:
                out[row, f0 : f0 + b] = spec
            else:
                consume(row, f0, spec)
    return out


def irfft_overlap_add(
    spec: np.ndarray, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH, gain: np.ndarray | None = None
) -> np.ndarray:
    """Frame-major inverse STFT before cropping: ``(N, F, n_bins)`` -> centre-padded ``(N, L)``,
    windowed, overlap-added and divided by the window envelope (what ``torch.istft`` crops).

    ``gain`` ``(G, F, n_bins)`` (real, ``N`` a multiple of ``G``), if given, multiplies the spectra
    first, a block of frames at a time (rows ``g * N / G ..`` share ``gain[g]``): a spectral mask
    applied without a masked copy of the whole spectrogram.
    """
    n_rows, n_frames_, _ = spec.shape
    rdtype = np.float32 if spec.dtype == np.complex64 else np.float64
    if gain is not None and (gain.ndim != 3 or gain.shape[1:] != spec.shape[1:] or n_rows % gain.shape[0]):
        raise ValueError(f"expected gain of shape (G, {n_frames_}, {spec.shape[-1]}) dividing {n_rows} rows, got {gain.shape}")
    window = _hann_np(n_fft, np.dtype(rdtype))
    out = np.zeros((n_rows, padded_length(n_frames_, n_fft, hop_length)), rdtype)
    buf = None if gain is None else np.empty((min(ROW_BLOCK, n_frames_), spec.shape[-1]), spec.dtype)
    for row in range(n_rows):
        for f0 in range(0, n_frames_, ROW_BLOCK):
            block = spec[row, f0 : f0 + ROW_BLOCK]
            if gain is not None:
                g = gain[row * gain.shape[0] // n_rows, f0 : f0 + ROW_BLOCK]
                block = np.multiply(block, g, out=buf[: block.shape[0]])
            frames = scipy.fft.irfft(block, n=n_fft, axis=-1, overwrite_x=gain is not None)
            _overlap_add(frames, window, out[row], f0 * hop_length, hop_length)
    out *= _inverse_envelope(n_frames_, n_fft, hop_length, np.dtype(rdtype))
    return out


def stft_rows(x: np.ndarray, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> np.ndarray:
    """Frame-major :func:`stft` of numpy ``x`` ``(N, T)`` -> ``(N, F, n_fft // 2 + 1)``
    (complex64 for float32 input): ``stft_rows(x)[n] == stft(x)[n].T`` up to rounding."""
    if x.ndim != 2 or x.shape[-1] == 0:
        raise ValueError(f"expected (N, T) audio, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    pad = n_fft // 2
    n_frames_ = n_frames(x.shape[-1], hop_length)
    padded = np.zeros((x.shape[0], padded_length(n_frames_, n_fft, hop_length)), x.dtype)
    width = min(x.shape[-1], padded.shape[-1] - pad)
    padded[:, pad : pad + width] = x[:, :width]
    return rfft_frames(padded, n_frames_, n_fft, hop_length)


def istft_rows(
    spec: np.ndarray, length: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH, gain: np.ndarray | None = None
) -> np.ndarray:
    """Frame-major :func:`istft`: ``(N, F, n_fft // 2 + 1)`` -> ``(N, length)`` (float32 for
    complex64); ``gain`` ``(G, F, n_fft // 2 + 1)``, if given, multiplies the spectra first (see
    :func:`irfft_overlap_add`), leaving ``spec`` as it was."""
    if spec.ndim != 3 or spec.shape[-1] != n_fft // 2 + 1:
        raise ValueError(f"expected (N, F, {n_fft // 2 + 1}) spectra, got shape {spec.shape}")
    padded = irfft_overlap_add(spec, n_fft, hop_length, gain)
    pad = n_fft // 2
    out = np.zeros((spec.shape[0], length), padded.dtype)
    width = max(0, min(length, padded.shape[-1] - pad))
    out[:, :width] = padded[:, pad : pad + width]
    return out


@numba.njit(cache=True, fastmath=True)
def _power_pairs(pairs, out):  # pragma: no cover - compiled
    for r in range(out.shape[0]):
        for f in range(out.shape[1]):
            src = pairs[r, f]
            dst = out[r, f]
            for k in range(dst.size):
                dst[k] = src[2 * k] * src[2 * k] + src[2 * k + 1] * src[2 * k + 1]


def power_rows(spec: np.ndarray) -> np.ndarray:
    """``|spec|^2`` of frame-major spectra ``(N, F, K)`` in the matching real dtype."""
    real = np.float32 if spec.dtype == np.complex64 else np.float64
    out = np.empty(spec.shape, real)
    _power_pairs(np.ascontiguousarray(spec).view(real), out)
    return out
