"""Demastering: draw effect parameters reproducibly and apply the chain to clean audio.

Drawing is separate from applying (audiotools style): :func:`draw_params` is cheap and seeded by
``(seed, track_id, variant)`` so a dataset never depends on order or parallelism;
:func:`degrade` applies the chain and the headroom gain that keeps the result from clipping.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from automaster.config import DAMAGE_EFFECTS, DegradeConfig
from automaster.dsp.constants import HOP_LENGTH
from automaster.effects.chain import apply_chain
from automaster.effects.params import BY_NAME, PARAMS, neutral_params

# Compressor thresholds are drawn relative to the clip's own RMS level, so every clip is really
# compressed (an absolute threshold above a quiet track's level would do nothing).
THRESHOLD_BELOW_RMS_DB = (-3.0, 12.0)


def seed_for(seed: int, track_id: str, variant: int = 0) -> int:
    """A 63-bit seed from ``(seed, track_id, variant)``, stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{track_id}:{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, track_id: str, variant: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`seed_for`."""
    return torch.Generator().manual_seed(seed_for(seed, track_id, variant))


def _uniform(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float32)


def smooth_trajectory(
    base: torch.Tensor, n_frames: int, generator: torch.Generator, wobble: float, points: int
) -> torch.Tensor:
    """A smooth normalised trajectory ``(n_frames,)`` in [0, 1] wobbling around ``base``.

    ``points`` control points uniform in ``base ± wobble`` joined by raised-cosine segments,
    so the curve and its slope are continuous (no zipper noise in the EQ).
    """
    controls = (base + wobble * (2.0 * _uniform(generator, points) - 1.0)).clamp(0.0, 1.0)
    if n_frames == 1 or points == 1:
        return controls[:1].expand(n_frames).clone()
    pos = torch.linspace(0.0, points - 1.0, n_frames)
    left = pos.floor().clamp(max=points - 2).long()
    frac = pos - left
    ease = 0.5 - 0.5 * torch.cos(math.pi * frac)
    return controls[left] * (1.0 - ease) + controls[left + 1] * ease


def draw_params(
    n_frames: int,
    generator: torch.Generator,
    config: DegradeConfig = DegradeConfig(),
    clip_rms_db: float | None = None,
) -> dict[str, torch.Tensor]:
    """Draw one clip's physical parameters: per-frame ``(1, F)``, per-clip ``(1,)``.

    Uniform in each ParamSpec's normalised range (log-uniform for log parameters). The
    compressor threshold sits ``THRESHOLD_BELOW_RMS_DB`` under ``clip_rms_db`` when given.
    ``output_gain_db`` is 0 here: :func:`degrade` sets it from the peak.
    """
    out: dict[str, torch.Tensor] = {}
    for spec in PARAMS:  # fixed table order: the draw sequence never changes
        u = _uniform(generator, 1)
        if spec.per_frame:
            traj = smooth_trajectory(u[0], n_frames, generator, config.trajectory_wobble, config.trajectory_points)
            out[spec.name] = spec.denormalize(traj).unsqueeze(0)
        else:
            out[spec.name] = spec.denormalize(u)
    if clip_rms_db is not None:
        lo, hi = THRESHOLD_BELOW_RMS_DB
        below = lo + (hi - lo) * _uniform(generator, 1)
        spec = BY_NAME["comp_threshold_db"]
        out["comp_threshold_db"] = (clip_rms_db - below).clamp(spec.low, spec.high)
    out["output_gain_db"] = torch.zeros(1)
    return out


def only_effects(params: dict[str, torch.Tensor], effects: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``params`` (one clip's draw) with every effect outside ``effects`` set to its neutral values
    (:func:`automaster.effects.params.neutral_params`): the chain then applies those effects alone.
    The draw itself is unchanged, so a restricted example keeps the crop and the values of the
    whole chain's."""
    if set(effects) >= set(DAMAGE_EFFECTS):
        return params
    first = next(iter(params.values()))
    n_frames = max(v.shape[-1] for k, v in params.items() if BY_NAME[k].per_frame)
    neutral = neutral_params(first.shape[0], n_frames, device=first.device)
    return {k: (v if BY_NAME[k].effect in effects or BY_NAME[k].effect not in DAMAGE_EFFECTS else neutral[k]) for k, v in params.items()}


@dataclass
class Degraded:
    """A degraded clip and everything needed to reproduce or undo it."""

    audio: torch.Tensor  # (B, C, T) degraded, peak <= ceiling
    params: dict[str, torch.Tensor]  # physical values, output_gain_db filled in


def degrade(
    clean: torch.Tensor,
    sample_rate: int,
    params: dict[str, torch.Tensor],
    generator: torch.Generator,
    config: DegradeConfig = DegradeConfig(),
    stft_clean: torch.Tensor | None = None,
    stft_rows_clean: np.ndarray | None = None,
) -> Degraded:
    """Apply the chain to ``clean`` ``(B, C, T)`` and a headroom gain so the peak stays below
    ``config.peak_ceiling`` (never hard-clipped). ``stft_clean`` (the clean STFT, if the caller
    already computed it for its mel spectrogram) saves one STFT; ``stft_rows_clean`` is the same
    frame-major (:func:`automaster.dsp.stft.stft_rows`, what the CPU path uses).
    """
    params = dict(params)
    params["output_gain_db"] = torch.zeros(clean.shape[0])
    with torch.no_grad():
        wet = apply_chain(clean, sample_rate, params, generator=generator, stft_x=stft_clean, stft_rows_x=stft_rows_clean)
        peak = wet.abs().amax(dim=(1, 2)).clamp_min(1e-9)
        gain_db = (20.0 * torch.log10(config.peak_ceiling / peak)).clamp(max=0.0)
        spec = BY_NAME["output_gain_db"]
        if bool((gain_db < spec.low).any()):
            raise ValueError(f"degraded peak needs {float(gain_db.min()):.1f} dB of headroom, beyond {spec.low} dB")
        wet = wet * torch.pow(10.0, gain_db / 20.0).view(-1, 1, 1)
    params["output_gain_db"] = gain_db
    return Degraded(audio=wet, params=params)


def clip_rms_db(audio: np.ndarray) -> float:
    """A clip's RMS level in dBFS (floored at -240): what :func:`draw_params` sets thresholds from."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20.0 * math.log10(max(rms, 1e-12))


def degrade_clip(
    clean: np.ndarray, sample_rate: int, seed: int, key: str, config: DegradeConfig = DegradeConfig(),
    effects: tuple[str, ...] = DAMAGE_EFFECTS,
) -> Degraded:
    """One clip ``(C, T)`` damaged with parameters drawn from ``(seed, key)`` at the model's hop
    (what the evaluate job and the level fit do); ``audio`` and ``params`` keep the batch axis.
    ``effects``: those that damage, the others neutral (:func:`only_effects`; the same draw).

    Raises:
        ValueError: the draw needs more headroom than ``output_gain_db``'s range allows.
    """
    gen = make_generator(seed, key)
    params = only_effects(draw_params(1 + clean.shape[-1] // HOP_LENGTH, gen, config, clip_rms_db=clip_rms_db(clean)), effects)
    return degrade(torch.from_numpy(np.ascontiguousarray(clean, dtype=np.float32))[None], sample_rate, params, gen, config)
