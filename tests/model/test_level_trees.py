"""The tree level model: an exact copy of scikit-learn's boosted trees in plain arrays, stored
without pickle, and the features it reads from audio of any length."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingRegressor

from automaster.dsp.constants import MODEL_RATE
from automaster.model.level_trees import TREES_FILE, LevelTrees, input_features, is_trees_dir, level_model_file
from automaster.restoration.features import N_FEATURES


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 12))
    y = 3.0 * x[:, 0] + np.abs(x[:, 1]) * (x[:, 2] > 0) + 0.1 * rng.standard_normal(2000)
    x[::37, 4] = np.nan  # missing values take the side the fit chose
    est = HistGradientBoostingRegressor(loss="absolute_error", max_iter=60, max_leaf_nodes=15, random_state=0).fit(x, y)
    return est, x


def test_the_arrays_predict_exactly_what_scikit_learn_predicts(fitted):
    est, x = fitted
    trees = LevelTrees.from_sklearn(est, x.shape[1])
    np.testing.assert_allclose(trees.predict_features(x), est.predict(x), atol=1e-9)
    assert len(trees.roots) == 60 and 1 <= trees.depth <= 14


def test_saved_without_pickle_and_read_back_the_same(tmp_path, fitted):
    est, x = fitted
    trees = LevelTrees.from_sklearn(est, x.shape[1], max_level_db=6.0, meta={"note": "test"})
    path = trees.save(tmp_path / "m")
    assert path.name == TREES_FILE and is_trees_dir(tmp_path / "m") and level_model_file(tmp_path / "m") == path
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert {"roots", "meta", "value", "threshold"} <= set(z.files)
    again = LevelTrees.load(tmp_path / "m")
    np.testing.assert_array_equal(again.predict_features(x), trees.predict_features(x))
    assert again.meta["note"] == "test" and again.max_level_db == 6.0
    bounded = again.level_from_features(x)
    assert np.abs(bounded).max() < 6.0 and np.all(np.sign(bounded) == np.sign(trees.predict_features(x)))


def test_a_wrong_file_or_feature_count_is_refused(tmp_path, fitted):
    est, x = fitted
    np.savez(tmp_path / TREES_FILE, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a tree level model"):
        LevelTrees.load(tmp_path)
    with pytest.raises(OSError):
        LevelTrees.load(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        LevelTrees.from_sklearn(est, 12).predict_features(x[:, :5])


@pytest.mark.parametrize("seconds", [0.05, 0.5, 3.0])
def test_features_of_short_and_long_audio_are_finite_and_gain_free_where_they_should_be(seconds):
    rng = np.random.default_rng(1)
    wave = torch.from_numpy(rng.standard_normal((2, 2, int(seconds * MODEL_RATE))).astype(np.float32) * 0.1)
    f = input_features(wave)
    assert f.shape == (2, 66 + N_FEATURES) and np.isfinite(f).all()
    louder = input_features(wave * 2.0)
    # RMS and peak (the 65th and 66th) move by 6 dB (/40); the waveform statistics are relative: unchanged
    np.testing.assert_allclose(louder[:, 64:66] - f[:, 64:66], 20 * np.log10(2.0) / 40.0, atol=1e-3)
    np.testing.assert_allclose(louder[:, 66:], f[:, 66:], atol=1e-3)
