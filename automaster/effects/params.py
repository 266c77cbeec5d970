"""The ParamSpec table: every parameter of the effects chain, its unit, range and rate.

One table serves the degradation (what is drawn), the dataset (what is stored: the training
targets), the forecaster (what it predicts, normalised to [0, 1]) and the inverse chain (what
drives the repair). Parameter names carry their unit.

Shapes: per-frame parameters are ``(B, F)`` trajectories at hop 512 (44.1 kHz frames); per-clip
parameters are ``(B,)``. As a stacked tensor all parameters are ``(B, P, F)`` in table order,
per-clip ones repeated over frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: ``name`` (with unit), ``effect``, ``unit``, range ``[low, high]``.

    ``per_frame``: a trajectory ``(B, F)`` rather than one value per clip ``(B,)``.
    ``log``: normalised on a log scale (frequencies, times, ratios).
    ``neutral``: the value at which its effect does nothing (``None`` if it has none alone).
    """

    name: str
    effect: str
    unit: str
    low: float
    high: float
    per_frame: bool
    log: bool = False
    neutral: float | None = None
    description: str = ""

    def normalize(self, value: torch.Tensor) -> torch.Tensor:
        """Physical value -> [0, 1] (clamped)."""
        if self.log:
            u = (torch.log(value.clamp_min(1e-12)) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        else:
            u = (value - self.low) / (self.high - self.low)
        return u.clamp(0.0, 1.0)

    def denormalize(self, u: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> physical value (smooth, no clamping: feed it a sigmoid for the range)."""
        if self.log:
            return torch.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)


PARAMS: tuple[ParamSpec, ...] = (
    # Two EQ bells, thesis formula R(f,t) = 1 + G(t) exp(-(f - fc(t))^2 / (2 (fc(t)/Q(t))^2)).
    ParamSpec("eq_low_gain_db", "eq", "dB", -6.0, 6.0, True, neutral=0.0, description="low bell gain"),
    ParamSpec("eq_low_fc_hz", "eq", "Hz", 80.0, 800.0, True, log=True, description="low bell centre"),
    ParamSpec("eq_low_q", "eq", "", 1.0, 4.0, True, log=True, description="low bell Q (width fc/Q)"),
    ParamSpec("eq_high_gain_db", "eq", "dB", -6.0, 6.0, True, neutral=0.0, description="high bell gain"),
    ParamSpec("eq_high_fc_hz", "eq", "Hz", 1500.0, 12000.0, True, log=True, description="high bell centre"),
    ParamSpec("eq_high_q", "eq", "", 1.0, 4.0, True, log=True, description="high bell Q (width fc/Q)"),
    # Soft-knee feed-forward compressor on an RMS detector.
    ParamSpec("comp_threshold_db", "compressor", "dB", -36.0, -12.0, False, description="threshold (dBFS RMS)"),
    ParamSpec("comp_ratio", "compressor", ":1", 1.0, 8.0, False, log=True, neutral=1.0, description="ratio"),
    ParamSpec("comp_knee_db", "compressor", "dB", 0.0, 12.0, False, description="knee width"),
    ParamSpec("comp_attack_ms", "compressor", "ms", 2.0, 50.0, False, log=True, description="attack time"),
    ParamSpec("comp_release_ms", "compressor", "ms", 30.0, 500.0, False, log=True, description="release time"),
    ParamSpec("comp_makeup_db", "compressor", "dB", 0.0, 6.0, False, neutral=0.0, description="makeup gain"),
    # Reverb: exponentially decaying noise impulse response, energy-normalised, wet/dry mix.
    ParamSpec("reverb_rt60_s", "reverb", "s", 0.2, 2.5, False, log=True, description="decay time to -60 dB"),
    ParamSpec("reverb_wet", "reverb", "", 0.0, 0.5, False, neutral=0.0, description="wet share of the mix"),
    # A single echo tap: y = x + gain * x(t - delay).
    ParamSpec("echo_delay_s", "echo", "s", 0.05, 0.5, False, log=True, description="echo delay"),
    ParamSpec("echo_gain", "echo", "", 0.0, 0.5, False, neutral=0.0, description="echo amplitude (linear)"),
    # Headroom gain applied after the chain so the degraded audio never clips (<= 0 dB).
    ParamSpec("output_gain_db", "gain", "dB", -24.0, 0.0, False, neutral=0.0, description="headroom gain"),
)

PARAM_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMS)
BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMS}
N_PARAMS = len(PARAMS)


def neutral_params(batch: int, n_frames: int, device=None) -> dict[str, torch.Tensor]:
    """Parameters that make the whole chain the identity (``None``-neutral ones at mid-range)."""
    out = {}
    for p in PARAMS:
        value = p.neutral if p.neutral is not None else p.denormalize(torch.tensor(0.5)).item()
        shape = (batch, n_frames) if p.per_frame else (batch,)
        out[p.name] = torch.full(shape, float(value), device=device)
    return out


def stack(params: dict[str, torch.Tensor], n_frames: int, normalized: bool = True) -> torch.Tensor:
    """Dict of physical parameters -> ``(B, P, F)`` (normalised to [0, 1] by default)."""
    rows = []
    for p in PARAMS:
        v = params[p.name]
        if not p.per_frame:
            v = v.unsqueeze(-1).expand(-1, n_frames)
        elif v.shape[-1] != n_frames:
            v = resample_frames(v, n_frames)
        rows.append(p.normalize(v) if normalized else v)
    return torch.stack(rows, dim=1)


def unstack(stacked: torch.Tensor, normalized: bool = True) -> dict[str, torch.Tensor]:
    """``(B, P, F)`` -> dict of physical parameters; per-clip ones averaged over frames."""
    if stacked.shape[1] != N_PARAMS:
        raise ValueError(f"expected (B, {N_PARAMS}, F) parameters, got shape {tuple(stacked.shape)}")
    out = {}
    for i, p in enumerate(PARAMS):
        v = stacked[:, i]
        if not p.per_frame:
            v = v.mean(dim=-1)
        out[p.name] = p.denormalize(v) if normalized else v
    return out


def resample_frames(traj: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Linearly resample a trajectory ``(B, F)`` to ``(B, n_frames)`` over the same time span."""
    if traj.shape[-1] == n_frames:
        return traj
    if traj.shape[-1] == 1:
        return traj.expand(*traj.shape[:-1], n_frames)
    return torch.nn.functional.interpolate(
        traj.unsqueeze(1), size=n_frames, mode="linear", align_corners=True
    ).squeeze(1)
