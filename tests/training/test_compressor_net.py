"""The compressor network's core (no Ray): deterministic for a seed, feature sets, the product's model."""

from __future__ import annotations

import numpy as np
import pytest
from automaster.audio import read_audio
from automaster.restoration.examples import concat_examples, from_bytes, to_bytes, track_examples
from automaster.restoration.features import FEATURE_GROUPS, N_FEATURES, feature_index
from automaster.training.compressor import (
    NetCompressionModel, NetConfig, choose_decision, fit, load_net, predict, roc_auc, save_net,
)
from tests.conftest import DATA

MUSIC = sorted((DATA / "music").glob("*.flac"))
TINY = NetConfig(hidden=8, layers=1, epochs=3, batch_size=16)


@pytest.fixture(scope="module")
def examples() -> tuple[dict, dict]:
    """Examples of the two FLAC songs (2 s crops): the first trains, the second validates."""
    train = track_examples(str(MUSIC[0]), "a", 3, 24, 2.0)
    val = track_examples(str(MUSIC[1]), "b", 3, 12, 2.0)
    return train, val


def _state(net) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def test_examples_are_rows_sorted_by_key_and_survive_bytes(examples):
    train, _ = examples
    assert train["features"].shape == (len(train["key"]), N_FEATURES) and np.isfinite(train["features"]).all()
    assert set(train["kinds"]) >= {"compressor", "clean"}
    compressed = train["kinds"] == "compressor"
    assert np.isfinite(train["targets"][compressed]).all() and np.isnan(train["targets"][~compressed]).all()
    shuffled = concat_examples([{k: v[::-1] for k, v in train.items()}])
    np.testing.assert_array_equal(shuffled["key"], np.sort(train["key"]))
    back = from_bytes(to_bytes(train))
    np.testing.assert_array_equal(back["features"], train["features"])
    assert back["kinds"].tolist() == train["kinds"].tolist()


def test_the_fit_is_deterministic_for_a_seed(examples):
    train, val = examples
    a, hist_a = fit(TINY, train, val)
    b, hist_b = fit(TINY, train, val)
    for (name, x), y in zip(_state(a).items(), _state(b).values()):
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert hist_a == hist_b and len(hist_a) == TINY.epochs
    c, _ = fit(NetConfig(**{**TINY.to_dict(), "seed": 1}), train, val)
    assert not np.array_equal(_state(a)["head.weight"], _state(c)["head.weight"])
    assert hist_a[-1]["train/loss"] < hist_a[0]["train/loss"]  # it learns what it is given


def test_feature_sets_select_their_columns():
    assert sum(s.stop - s.start for s in FEATURE_GROUPS.values()) == N_FEATURES
    np.testing.assert_array_equal(feature_index("all"), np.arange(N_FEATURES))
    level, mod = FEATURE_GROUPS["level"], FEATURE_GROUPS["modulation"]
    np.testing.assert_array_equal(feature_index("modulation+level"), np.r_[level.start:level.stop, mod.start:mod.stop])
    for bad in ("", "level+nope", "level+"):
        with pytest.raises(ValueError, match="feature group"):
            feature_index(bad)
    with pytest.raises(ValueError, match="hidden"):
        NetConfig(hidden=0).check()
    with pytest.raises(ValueError, match="dropout"):
        NetConfig(dropout=1.0).check()


def test_a_network_on_a_feature_set_reads_only_those_columns(examples):
    train, val = examples
    net, _ = fit(NetConfig(**{**TINY.to_dict(), "features": "level"}), train, val)
    x = train["features"][:4].copy()
    before = predict(net, x)
    x[:, FEATURE_GROUPS["slopes"]] += 100.0  # columns the network does not read
    np.testing.assert_array_equal(predict(net, x)[0], before[0])


def test_the_saved_model_loads_and_gates_the_inverse(examples, tmp_path):
    train, val = examples
    net, _ = fit(TINY, train, val)
    decision = choose_decision(net, val, max_fpr=0.0)
    prob_neg, _ = predict(net, val["features"][val["kinds"] != "compressor"])
    assert (prob_neg >= decision).mean() == 0.0  # the decision keeps the false positives at the asked rate
    save_net(tmp_path, net, TINY, {"decision": 1.5})  # never fires
    loaded, meta = load_net(tmp_path)
    np.testing.assert_allclose(predict(loaded, val["features"])[1], predict(net, val["features"])[1], rtol=1e-6)
    model = NetCompressionModel.load(str(tmp_path))
    audio, sr = read_audio(MUSIC[0], duration_s=2.0)
    out, report = model.undo(audio, sr)
    assert out is audio and not report["fired"]  # the detector did not fire: the input itself
    model.decision = -1.0
    out, report = model.undo(audio, sr)
    assert report["fired"] and out.shape == audio.shape and np.isfinite(out).all()
    (tmp_path / "config.json").write_text('{"kind": "other"}')
    with pytest.raises(ValueError, match="not a compression network"):
        load_net(tmp_path)


def test_roc_auc_is_the_rank_statistic():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
