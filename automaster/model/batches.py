"""Dataset rows -> model tensors: random fixed-length training crops, full-length examples.

Rows are the paired dataset's Parquet rows (see :mod:`automaster.dataset`) as Ray Data hands
them over in a numpy batch. Mels are normalised here, by the configured mapping, so the stored
dataset stays in absolute dB and one dataset serves every normalisation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from automaster.config import AudioConfig
from automaster.dataset import decode_row
from automaster.dsp.scale import normalize_fixed, normalize_minmax
from automaster.effects.params import PARAMS, stack


def batch_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A Ray Data numpy batch (columns) -> its rows, not decoded (see :func:`rows_from_batch`)."""
    n = len(next(iter(batch.values())))
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def rows_from_batch(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A Ray Data numpy batch (columns) -> decoded rows (numpy arrays with shapes)."""
    return [decode_row(row) for row in batch_rows(batch)]


def normalize_mel(db: torch.Tensor, audio: AudioConfig, stats_from: torch.Tensor | None = None) -> torch.Tensor:
    """dB mels ``(B, 1, M, F)`` -> [0, 1] by ``audio.normalization``.

    ``minmax`` normalises each clip by the min/max of ``stats_from`` (default: itself), so a
    clean target is scaled like its degraded input.
    """
    if audio.normalization == "fixed":
        return normalize_fixed(db, audio.db_min, audio.db_max)
    if audio.normalization == "minmax":
        ref = db if stats_from is None else stats_from
        _, lo, hi = normalize_minmax(ref)
        shape = (-1,) + (1,) * (db.dim() - 1)
        return ((db - lo.view(shape)) / (hi - lo).clamp_min(1e-8).view(shape)).clamp(0.0, 1.0)
    raise ValueError(f"audio.normalization must be 'fixed' or 'minmax', got {audio.normalization!r}")


def _params_tensor(row: dict[str, Any], start: int, n: int) -> torch.Tensor:
    values = {}
    for p in PARAMS:
        v = row[p.name]
        values[p.name] = torch.as_tensor(np.asarray(v[start : start + n]))[None] if p.per_frame else torch.tensor([float(v)])
    return stack(values, n)[0]  # (P, n) normalised


def _pad_to(x: np.ndarray, length: int, value: float) -> np.ndarray:
    if x.shape[-1] >= length:
        return x[..., :length]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])]
    return np.pad(x, pad, constant_values=value)


def crop_example(row: dict[str, Any], start: int, n_frames: int, hop: int, audio: AudioConfig) -> dict[str, torch.Tensor]:
    """One crop of ``n_frames`` frames from ``start``: mels ``(1, M, n)``, params ``(P, n)``,
    waves ``(1, n * hop)`` aligned with the frames."""
    floor = audio.db_min
    mel_o = _pad_to(row["mel_original_db"][:, start : start + n_frames], n_frames, floor)
    mel_d = _pad_to(row["mel_degraded_db"][:, start : start + n_frames], n_frames, floor)
    total = int(row["n_frames"])
    take = min(n_frames, total - start)
    params = _params_tensor(row, start, take)
    if take < n_frames:
        params = torch.cat([params, params[:, -1:].expand(-1, n_frames - take)], dim=1)
    example = {
        "mel_original_db": torch.from_numpy(np.ascontiguousarray(mel_o))[None],
        "mel_degraded_db": torch.from_numpy(np.ascontiguousarray(mel_d))[None],
        "params": params,
    }
    if row.get("wave_original") is not None:
        s0, n = start * hop, n_frames * hop
        example["wave_original"] = torch.from_numpy(_pad_to(row["wave_original"][s0 : s0 + n], n, 0.0))[None]
        example["wave_degraded"] = torch.from_numpy(_pad_to(row["wave_degraded"][s0 : s0 + n], n, 0.0))[None]
    return example


def collate(examples: list[dict[str, torch.Tensor]], audio: AudioConfig, sample_rate: int) -> dict[str, torch.Tensor]:
    """Stack examples and add the normalised mels the model reads."""
    batch = {k: torch.stack([e[k] for e in examples]) for k in examples[0]}
    batch["mel_degraded"] = normalize_mel(batch["mel_degraded_db"], audio)
    batch["mel_original"] = normalize_mel(batch["mel_original_db"], audio, stats_from=batch["mel_degraded_db"])
    batch["sample_rate"] = torch.full((len(examples),), sample_rate, dtype=torch.int64)
    return batch


def random_crops(
    rows: list[dict[str, Any]], n_frames: int, crops_per_row: int, rng: np.random.Generator, audio: AudioConfig
) -> list[dict[str, torch.Tensor]]:
    """``crops_per_row`` random crops of every row (shorter rows are padded)."""
    out = []
    for row in rows:
        total = int(row["n_frames"])
        for _ in range(crops_per_row):
            start = int(rng.integers(0, max(1, total - n_frames + 1)))
            out.append(crop_example(row, start, n_frames, audio.hop_length, audio))
    return out


def full_example(row: dict[str, Any], audio: AudioConfig) -> dict[str, torch.Tensor]:
    """The whole clip as a batch of one (validation, evaluation)."""
    n = int(row["n_frames"])
    example = crop_example(row, 0, n, audio.hop_length, audio)
    if "wave_original" in example:  # keep the exact clip length rather than n * hop
        length = int(row["n_samples"])
        example["wave_original"] = torch.from_numpy(np.asarray(row["wave_original"][:length]))[None]
        example["wave_degraded"] = torch.from_numpy(np.asarray(row["wave_degraded"][:length]))[None]
    return collate([example], audio, int(row["sample_rate"]))
