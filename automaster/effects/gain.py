"""Output gain (headroom) and its inverse: ``y = x 10^(gain_db / 20)``.

Shapes: audio ``(B, C, T)``; ``gain_db`` per clip ``(B,)`` in dB.
"""

from __future__ import annotations

import torch

from automaster.effects._checks import ParamLike, check_audio, clip_param


def db_to_amplitude(gain_db: torch.Tensor) -> torch.Tensor:
    """Linear amplitude of a gain in dB."""
    return torch.pow(10.0, gain_db / 20.0)


def gain(x: torch.Tensor, sample_rate: float, gain_db: ParamLike) -> torch.Tensor:
    """Scale ``x`` ``(B, C, T)`` by ``gain_db`` ``(B,)``; ``sample_rate`` is unused (uniform API)."""
    check_audio(x)
    return x * db_to_amplitude(clip_param("gain_db", gain_db, x.shape[0], x)).view(-1, 1, 1)


def gain_inverse(y: torch.Tensor, sample_rate: float, gain_db: ParamLike) -> torch.Tensor:
    """Undo :func:`gain` (scale by ``-gain_db``)."""
    check_audio(y)
    return y * db_to_amplitude(-clip_param("gain_db", gain_db, y.shape[0], y)).view(-1, 1, 1)
