"""Chunks of a long track, their crossfade windows, and moving controls between frame grids.

Long tracks run in bounded memory: analysis and synthesis go over chunks of ``chunk_s`` seconds
with ``context_s`` seconds of context on each side. The frame grid is the model's (44.1 kHz,
hop 512); each chunk also knows its span of native-rate samples. Overlaps are crossfaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import soxr
import torch

from automaster.dsp.stft import HOP_LENGTH, MODEL_RATE


@dataclass(frozen=True)
class Chunk:
    """One chunk: global model-rate frames ``[f0, f1)`` and native samples ``[s0, s1)``.

    ``frame_in``/``frame_out`` (and ``sample_in``/``sample_out``): the overlap spans ``(start,
    end)`` over which the chunk fades in (from its predecessor) and out (to its successor);
    ``None`` at the track's ends.
    """

    f0: int
    f1: int
    s0: int
    s1: int
    frame_in: tuple[int, int] | None
    frame_out: tuple[int, int] | None
    sample_in: tuple[int, int] | None
    sample_out: tuple[int, int] | None


def total_frames(n_samples: int, sample_rate: int, hop: int = HOP_LENGTH) -> int:
    """Frames of the track on the model-rate hop grid (``center=True`` framing)."""
    return 1 + int(round(n_samples * MODEL_RATE / sample_rate)) // hop


def plan_chunks(
    n_samples: int, sample_rate: int, chunk_s: float, context_s: float, hop: int = HOP_LENGTH
) -> list[Chunk]:
    """Split a track into chunks of at most ``chunk_s`` (plus context); one chunk if it fits."""
    n_frames = total_frames(n_samples, sample_rate, hop)
    core = max(1, int(round(chunk_s * MODEL_RATE / hop)))
    ctx = max(1, int(round(context_s * MODEL_RATE / hop)))

    def sample(frame: int) -> int:
        return min(n_samples, int(round(frame * hop * sample_rate / MODEL_RATE)))

    if n_frames <= core + 2 * ctx:
        return [Chunk(0, n_frames, 0, n_samples, None, None, None, None)]
    n = math.ceil(n_frames / core)
    bounds = np.round(np.linspace(0, n_frames, n + 1)).astype(int)
    chunks = []
    for k in range(n):
        cs, ce = int(bounds[k]), int(bounds[k + 1])
        f0, f1 = max(0, cs - ctx), min(n_frames, ce + ctx)
        fin = (cs - ctx, cs + ctx) if k > 0 else None
        fout = (ce - ctx, ce + ctx) if k < n - 1 else None
        chunks.append(
            Chunk(
                f0, f1, sample(f0), n_samples if k == n - 1 else sample(f1), fin, fout,
                None if fin is None else (sample(fin[0]), sample(fin[1])),
                None if fout is None else (sample(fout[0]), sample(fout[1])),
            )
        )
    return chunks


def window(start: int, length: int, ramp_in, ramp_out, equal_power: bool) -> np.ndarray:
    """Weights ``(length,)`` of a chunk starting at ``start``: 1 inside, ramps over the overlaps.

    Raised cosine (``sin^2``, the two sides sum to 1: coherent signals) or equal power (``sin``,
    squares sum to 1: incoherent signals such as random-phase Griffin-Lim).
    """
    w = np.ones(length, np.float32)
    idx = np.arange(start, start + length, dtype=np.float64)
    for ramp, rising in ((ramp_in, True), (ramp_out, False)):
        if ramp is None:
            continue
        a, b = ramp
        x = np.clip((idx - a) / max(b - a, 1), 0.0, 1.0)
        if not rising:
            x = 1.0 - x
        w *= (np.sin(0.5 * np.pi * x) if equal_power else np.sin(0.5 * np.pi * x) ** 2).astype(np.float32)
    return w


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Crop or zero-pad the last axis to ``n``."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def fit_frames(x: torch.Tensor, n: int) -> torch.Tensor:
    """Crop or pad (replicating the last frame) the last axis to ``n`` frames."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return torch.cat([x, x[..., -1:].expand(*x.shape[:-1], n - x.shape[-1])], dim=-1)


def resample(audio: np.ndarray, sr_in: int, sr_out: int, length: int | None = None) -> np.ndarray:
    """``(C, T)`` float32 resampled with soxr (HQ); cropped/padded to ``length`` if given."""
    if sr_in == sr_out:
        out = audio
    else:
        out = np.asarray(soxr.resample(np.ascontiguousarray(audio.T), sr_in, sr_out, quality="HQ"), np.float32)
        out = out.reshape(-1, audio.shape[0]).T
    if length is not None:
        out = fit_length(out, length)
    return np.ascontiguousarray(out, dtype=np.float32)


def interp_frames(values: torch.Tensor, times_frames: np.ndarray) -> torch.Tensor:
    """``values`` ``(..., F_global)`` at fractional global frames -> ``(..., len(times))``
    (linear interpolation, clamped to the track)."""
    n_global = values.shape[-1]
    g = np.clip(times_frames, 0, n_global - 1)
    lo = np.floor(g).astype(np.int64)
    hi = np.minimum(lo + 1, n_global - 1)
    frac = torch.from_numpy((g - lo).astype(np.float32)).to(values.device)
    lo_t, hi_t = torch.from_numpy(lo).to(values.device), torch.from_numpy(hi).to(values.device)
    return values[..., lo_t] * (1 - frac) + values[..., hi_t] * frac
