"""Decibels and the [0, 1] normalisations of mel spectrograms.

Two normalisations:

* ``fixed`` (default): a fixed dB range maps to [0, 1]. Absolute level survives, so the model
  sees gain and loudness, and inverting needs no side information.
* ``minmax``: the thesis's per-clip min-max. Hides level; kept for comparison. Its ``(min, max)``
  per clip is returned so it can be inverted exactly.
"""

from __future__ import annotations

import torch

from automaster.dsp.constants import DB_MAX, DB_MIN

EPS = 1e-6  # power floor: 10*log10(EPS) dB


def power_to_db(power: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``10 log10(max(power, eps))`` (librosa's ``power_to_db`` with ``amin=eps``, ``ref=1``)."""
    return 10.0 * torch.log10(power.clamp_min(eps))


def db_to_power(db: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`power_to_db` above the floor."""
    return torch.pow(10.0, db / 10.0)


def normalize_fixed(db: torch.Tensor, db_min: float = DB_MIN, db_max: float = DB_MAX) -> torch.Tensor:
    """Map dB to [0, 1] with a fixed range; values outside are clamped."""
    return ((db - db_min) / (db_max - db_min)).clamp(0.0, 1.0)


def denormalize_fixed(u: torch.Tensor, db_min: float = DB_MIN, db_max: float = DB_MAX) -> torch.Tensor:
    """Inverse of :func:`normalize_fixed` (exact inside the range)."""
    return u * (db_max - db_min) + db_min


def normalize_minmax(db: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-clip min-max of ``db`` ``(B, ..., F)``; returns ``(u, db_min, db_max)`` with ``(B,)`` stats."""
    flat = db.reshape(db.shape[0], -1)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    shape = (-1,) + (1,) * (db.dim() - 1)
    u = (db - lo.view(shape)) / (hi - lo).clamp_min(eps).view(shape)
    return u, lo, hi


def denormalize_minmax(u: torch.Tensor, db_min: torch.Tensor, db_max: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_minmax` given its stored ``(B,)`` min and max."""
    shape = (-1,) + (1,) * (u.dim() - 1)
    return u * (db_max - db_min).view(shape) + db_min.view(shape)
