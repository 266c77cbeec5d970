"""Validation metrics: totals of shares of the rows (one share per Ray Train rank) add up to the
metrics of all the rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automaster.config import AudioConfig, ModelConfig
from automaster.dataset import decode_row, to_pcm16
from automaster.effects.params import PARAMS
from automaster.model.cascade import Cascade
from automaster.model.validate import metrics_from_totals, validation_metrics, validation_totals


def _row(seed: int, n_frames: int) -> dict:
    rng = np.random.default_rng(seed)
    n_samples = n_frames * 512
    row = {
        "sample_rate": 44100, "n_samples": n_samples, "n_mels": 128, "n_frames": n_frames,
        "mel_original_db": rng.uniform(-60, 40, (128, n_frames)).astype(np.float32),
        "mel_degraded_db": rng.uniform(-60, 40, (128, n_frames)).astype(np.float32),
        "wave_original": to_pcm16(rng.uniform(-0.5, 0.5, n_samples)),
        "wave_degraded": to_pcm16(rng.uniform(-0.5, 0.5, n_samples)),
    }  # fmt: skip
    for p in PARAMS:
        row[p.name] = rng.uniform(p.low, p.high, n_frames).astype(np.float32) if p.per_frame else float(rng.uniform(p.low, p.high))
    return decode_row(row)


@pytest.mark.parametrize("world", [2, 3])
def test_totals_of_shares_add_up_to_the_metrics_of_all_rows(world):
    torch.manual_seed(0)
    model = Cascade.from_config(ModelConfig(mode="cascade", unet_depth=2, unet_width=4, lstm_hidden=8, lstm_layers=1))
    audio = AudioConfig()
    rows = [_row(seed, n_frames) for seed, n_frames in enumerate((24, 40, 33, 16))]
    means = {p.name: float(np.mean([np.mean(r[p.name]) for r in rows])) for p in PARAMS}

    expected, figure = validation_metrics(model, rows, audio, means)
    pooled: dict[str, tuple[float, int]] = {}
    for rank in range(world):  # what the ranks' all-reduce adds up
        totals, _ = validation_totals(model, rows[rank::world], audio, means)
        for key, (total, n) in totals.items():
            pooled[key] = (pooled.get(key, (0.0, 0))[0] + total, pooled.get(key, (0.0, 0))[1] + n)

    assert {n for _, n in pooled.values()} == {len(rows)}
    assert metrics_from_totals(pooled) == pytest.approx(expected, rel=1e-9)
    assert "val/mae_ratio" in expected and figure["clean"].shape == (128, 24)  # the first row's


def test_no_rows_give_no_metrics():
    assert metrics_from_totals({"val/mel_l1_db": (0.0, 0)}) == {}
