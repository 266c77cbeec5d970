"""Input checks shared by the effects: audio shape and parameter shapes, with clear messages."""

from __future__ import annotations

import scipy.fft
import torch

from automaster.dsp.stft import HOP_LENGTH
from automaster.effects.params import resample_frames

ParamLike = torch.Tensor | float


def check_audio(x: torch.Tensor, name: str = "audio") -> torch.Tensor:
    """Return ``x`` if it is floating-point ``(B, C, T)`` with ``T > 0``, else raise ValueError."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected (B, C, T) {name} tensor, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[-1] == 0 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected (B, C, T) {name}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected floating-point {name}, got dtype {x.dtype}")
    return x


def check_sample_rate(sample_rate: float) -> float:
    """Return the sample rate if positive, else raise ValueError."""
    if not sample_rate > 0:
        raise ValueError(f"expected a positive sample_rate, got {sample_rate!r}")
    return float(sample_rate)


def clip_param(name: str, value: ParamLike, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A per-clip parameter as ``(B,)`` on ``like``'s device and dtype.

    Accepts a float, a 0-d tensor or a ``(B,)`` tensor (a ``(B, 1)`` one is squeezed).
    """
    v = torch.as_tensor(value, device=like.device, dtype=like.dtype)
    if v.ndim == 2 and v.shape[-1] == 1:
        v = v.squeeze(-1)
    if v.ndim == 0:
        return v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"expected {name} of shape ({batch},) (one value per clip), got shape {tuple(v.shape)}")
    return v


def frame_param(name: str, value: ParamLike, batch: int, n_frames: int, like: torch.Tensor) -> torch.Tensor:
    """A per-frame trajectory resampled by time to ``(B, n_frames)``.

    Accepts ``(B, F)`` for any ``F`` (frames spanning the whole clip), or a constant given as a
    float, a 0-d tensor or ``(B,)``.
    """
    v = torch.as_tensor(value, device=like.device, dtype=like.dtype)
    if v.ndim <= 1:
        return clip_param(name, v, batch, like).unsqueeze(-1).expand(batch, n_frames)
    if v.ndim != 2 or v.shape[0] != batch or v.shape[1] == 0:
        raise ValueError(f"expected {name} of shape ({batch}, F) (a trajectory per clip), got shape {tuple(v.shape)}")
    return resample_frames(v, n_frames)


def stft_frames(n_samples: int) -> int:
    """Frames of the STFT of ``n_samples`` (hop 512, centred) at any sample rate."""
    return 1 + n_samples // HOP_LENGTH


def fast_fft_size(n: int) -> int:
    """The smallest size >= ``n`` whose real FFT is fast (a product of small primes)."""
    return scipy.fft.next_fast_len(int(n), real=True)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will track an operation on any of ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def rfft(x: torch.Tensor, n: int) -> torch.Tensor:
    """``torch.fft.rfft(x, n=n)`` over the last axis; on the CPU without autograd it runs
    scipy's pocketfft, about twice as fast as torch's for the long padded sizes used here."""
    if x.device.type != "cpu" or needs_grad(x):
        return torch.fft.rfft(x, n=n)
    return torch.from_numpy(scipy.fft.rfft(x.detach().numpy(), n=n, axis=-1))


def irfft(spec: torch.Tensor, n: int) -> torch.Tensor:
    """``torch.fft.irfft(spec, n=n)`` over the last axis (scipy on the CPU without autograd)."""
    if spec.device.type != "cpu" or needs_grad(spec):
        return torch.fft.irfft(spec, n=n)
    return torch.from_numpy(scipy.fft.irfft(spec.detach().numpy(), n=n, axis=-1))


def upsample_linear(values: torch.Tensor, step: int, length: int) -> torch.Tensor:
    """Linear interpolation ``(B, N)`` -> ``(B, length)``, value ``i`` sitting at sample ``i * step``
    (the last one held to the end)."""
    span = (values.shape[-1] - 1) * step + 1
    out = torch.nn.functional.interpolate(values.unsqueeze(1), size=span, mode="linear", align_corners=True)
    return torch.nn.functional.pad(out, (0, length - span), mode="replicate").squeeze(1)
