"""The core on a demaster dataset (written here without Ray): fresh damage of its originals, or its
fixed pairs (the thesis cascade); validation on its fixed validation pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from automaster.config import load_config
from automaster.dataset import DATASET_DIR, META_FILE, parquet_bytes, to_pcm16
from automaster.effects.params import PARAMS
from automaster.training.bank import bank_from_corpus
from automaster.training.fresh import FreshDamage
from automaster.training.loop import train
from automaster.training.sources import FreshSource, PairsSource, data_source

FMA = Path(__file__).resolve().parents[1] / "data" / "fma"
N_TRACKS = 5  # readable tracks of the test corpus


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two variants of each readable test track, split 3 training / 1 validation."""
    root = tmp_path_factory.mktemp("paired")
    (root / DATASET_DIR).mkdir()
    bank = bank_from_corpus([str(FMA)], ("training", "validation", "test"))
    assert len(bank) == N_TRACKS
    for k in range(len(bank)):
        fresh = FreshDamage(bank.subset([k]), 128 * 512, load_config(), seed=k)
        rows = []
        for variant, row in enumerate(fresh.rows(2)):
            row.update(track_id=bank.track_ids[k], variant=variant, split="validation" if k == 0 else "training",
                       genre="x", source_path="x", seed=0, input_gain_db=0.0, rms_db=-20.0,
                       audio_original="", audio_degraded="")  # fmt: skip
            row["wave_original"], row["wave_degraded"] = to_pcm16(row["wave_original"]), to_pcm16(row["wave_degraded"])
            rows.append(row)
        (root / DATASET_DIR / f"{k}.parquet").write_bytes(parquet_bytes(rows))
    (root / META_FILE).write_text(json.dumps({"params": [{"name": p.name} for p in PARAMS]}))
    return root


def test_fresh_damage_of_the_originals_validates_on_the_fixed_pairs(dataset, tmp_path):
    config = load_config(overrides=["model.mode=spectral", "model.spectral_width=4", "model.spectral_depth=2",
                                    "train.crop_seconds=1", "train.batch_size=2", "train.steps=2"])  # fmt: skip
    source = data_source(str(dataset), config)
    tracks = {r["track_id"] for r in source.val_rows}
    assert isinstance(source, FreshSource) and len(source.fresh.bank) == N_TRACKS - 1  # one original per track
    assert len(source.val_rows) == 2 and len(tracks) == 1 and not tracks & set(source.fresh.bank.track_ids)
    summary = train(config, source, tmp_path / "out")
    assert summary["step"] == 2 and summary["metrics"]["val/mrstft_identity"] > 0


@pytest.mark.parametrize("override", ["train.damage_effects=reverb", "train.damage_scale=0.5"])
def test_shaped_damage_is_refused_on_fixed_pairs_it_would_not_change(dataset, override):
    """The cascade on --data takes the fixed pairs: restricted or narrowed fresh damage would be
    silently ignored, so it is an error (the CLI: exit 2, one line)."""
    config = load_config(overrides=["model.mode=cascade", override])
    with pytest.raises(ValueError, match="use --audio, or train.source=fresh"):
        data_source(str(dataset), config)
    fresh = load_config(overrides=["model.mode=cascade", "train.source=fresh", override])
    assert isinstance(data_source(str(dataset), fresh), FreshSource)


def test_the_thesis_cascade_trains_on_the_fixed_pairs_by_epoch(dataset, tmp_path):
    config = load_config(overrides=["model.unet_depth=2", "model.unet_width=4", "model.lstm_hidden=8",
                                    "model.lstm_layers=1", "train.crop_frames=64", "train.batch_size=4",
                                    "train.crops_per_track=1", "train.epochs=2"])  # fmt: skip
    source = data_source(str(dataset), config)
    # 2 variants of each training track, 1 crop each, batches of 4
    assert isinstance(source, PairsSource) and source.steps_per_epoch == -(-2 * (N_TRACKS - 1) // 4)
    summary = train(config, source, tmp_path / "out")
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = source.steps_per_epoch
    assert [(m["epoch"], m["step"]) for m in lines] == [(0, steps), (1, 2 * steps)]
    assert summary["monitor"] == "val/mel_l1_db" and np.isfinite(summary["best"])
