"""Fresh damage: deterministic for a seed, new every epoch, the same batched or alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from automaster.config import load_config
from automaster.effects.params import N_PARAMS
from automaster.training.bank import ClipBank, bank_from_corpus
from automaster.training.fresh import FreshDamage, narrow

FMA = Path(__file__).resolve().parents[1] / "data" / "fma"
CROP = 64 * 512  # 0.74 s


@pytest.fixture(scope="module")
def bank() -> ClipBank:
    return bank_from_corpus([str(FMA)], ("training", "validation", "test"))


def _fresh(bank, seed=0, *sets):
    return FreshDamage(bank, CROP, load_config(overrides=list(sets)), seed)


def test_the_bank_holds_the_readable_tracks_as_int16(bank, tmp_path):
    assert len(bank) >= 3 and all(c.dtype == np.int16 for c in bank.clips)
    bank.save(tmp_path / "bank.npz")
    again = ClipBank.load(tmp_path / "bank.npz")
    assert again.track_ids == bank.track_ids and all(np.array_equal(a, b) for a, b in zip(again.clips, bank.clips))


def test_a_seed_gives_the_same_examples_and_another_epoch_others(bank):
    a = _fresh(bank).batch(0, [0, 1, 2])
    b = _fresh(bank).batch(0, [0, 1, 2])
    for key in ("wave_original", "wave_degraded", "params", "level_db"):
        assert torch.equal(a[key], b[key]), key
    other_epoch = _fresh(bank).batch(1, [0, 1, 2])
    other_seed = _fresh(bank, 1).batch(0, [0, 1, 2])
    for other in (other_epoch, other_seed):
        assert not torch.equal(a["params"], other["params"])
        assert not torch.equal(a["wave_degraded"], other["wave_degraded"])
    assert a["wave_degraded"].shape == (3, 1, CROP) and a["params"].shape == (3, N_PARAMS, 64)
    assert a["wave_degraded"].abs().max() <= 0.999 + 1e-6


def test_a_batched_example_equals_the_same_example_alone(bank):
    together = _fresh(bank).batch(2, [5, 6])
    alone = _fresh(bank).batch(2, [6])
    assert torch.allclose(together["wave_degraded"][1], alone["wave_degraded"][0], atol=1e-6)
    assert torch.allclose(together["level_db"][1], alone["level_db"][0], atol=1e-4)


def test_narrowing_pulls_parameters_to_neutral_and_one_keeps_the_thesis_draw(bank):
    _, params, _ = _fresh(bank).draw(0, 0)
    assert narrow(params, 1.0) is params
    half = narrow(params, 0.5)
    assert torch.allclose(half["echo_gain"], 0.5 * params["echo_gain"])
    assert torch.equal(half["reverb_rt60_s"], params["reverb_rt60_s"])  # no neutral value: unchanged
    zero = narrow(params, 0.0)
    assert zero["comp_ratio"].item() == pytest.approx(1.0) and zero["eq_low_gain_db"].abs().max() < 1e-5


def test_validation_rows_have_the_dataset_row_format(bank):
    rows = _fresh(bank, 3).rows(2)
    row = rows[0]
    assert row["mel_original_db"].shape == (128, row["n_frames"]) and row["wave_degraded"].shape == (CROP,)
    assert row["echo_delay_s"] > 0 and row["eq_low_gain_db"].shape == (row["n_frames"],)
    assert not np.array_equal(rows[0]["wave_original"], rows[1]["wave_original"])


def test_damage_effects_keeps_those_effects_and_makes_the_rest_neutral(bank):
    whole = _fresh(bank).draw(0, 0)
    reverb = _fresh(bank, 0, "train.damage_effects=reverb").draw(0, 0)
    assert np.array_equal(whole[0], reverb[0])  # the same crop: only the other effects change
    p = reverb[1]
    assert torch.equal(p["reverb_wet"], whole[1]["reverb_wet"]) and p["reverb_wet"].item() > 0
    assert p["comp_ratio"].item() == 1.0 and p["echo_gain"].item() == 0.0
    assert p["eq_low_gain_db"].abs().max() == 0 and p["eq_high_gain_db"].shape == whole[1]["eq_high_gain_db"].shape
    batch = _fresh(bank, 0, "train.damage_effects=reverb").batch(0, [0])
    raw = batch["params"][0]  # normalised, in table order: echo gain's neutral 0 is 0 normalised
    from automaster.effects.params import PARAMS

    assert raw[[s.name for s in PARAMS].index("echo_gain")].abs().max() == 0
    # the whole chain by name equals the default
    every = _fresh(bank, 0, "train.damage_effects=eq,compressor,reverb,echo").batch(0, [0, 1])
    assert torch.equal(every["wave_degraded"], _fresh(bank).batch(0, [0, 1])["wave_degraded"])


@pytest.mark.parametrize("bad", ["delay", "reverb,chorus", ","])
def test_an_unknown_damage_effect_is_a_config_error(bad):
    from automaster.config import ConfigError

    with pytest.raises(ConfigError, match="train.damage_effects: expected a comma-separated subset of eq, compressor"):
        load_config(overrides=[f"train.damage_effects={bad}"])
