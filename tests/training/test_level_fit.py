"""The level model fitted offline (python -m automaster.training.level) on real clips damaged by
both implementations and by each of our effects alone: boosted trees the mastering job takes as
its level model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from automaster.audio import read_audio
from automaster.mastering import Masterer
from automaster.corpus import scan_corpus
from automaster.model.level_trees import LevelTrees
from automaster.restoration.features import N_FEATURES
from automaster.training.level import DAMAGES, damage_crop, features_of, main, plan_jobs
from tests.conftest import DATA, REPO

FMA = DATA / "fma"


def test_a_fitted_model_is_a_level_model_and_reports_its_errors(tmp_path, capsys):
    out = tmp_path / "level"
    args = ["--audio", str(FMA), "--out", str(out), "--crops-per-track", "2", "--val-crops-per-track", "2", "--seconds", "3"]
    assert main(args) == 0
    report = json.loads((out / "level_fit.json").read_text())
    for split in ("training", "validation"):
        assert set(report[split]) == set(DAMAGES)
    train = report["training"]["ours"]
    assert train["n"] == 4  # 2 usable training clips (001666 has no audio, 001888 is 1.5 s) x 2 crops
    assert train["model_lu"] < train["identity_lu"]  # it fits what it was given
    examples = np.load(out / "level_examples.npz")
    assert examples["training_x"].shape == (4 * len(DAMAGES), 66 + N_FEATURES) and np.isfinite(examples["training_x"]).all()
    model = LevelTrees.load(out)
    ours = examples["training_damage"] == "ours"  # the saved trees are the ones the report measured
    pred = model.level_from_features(examples["training_x"][ours])
    assert np.mean(np.abs(pred - examples["training_y"][ours])) == pytest.approx(train["model_lu"], abs=1e-4)
    audio, sr = read_audio(FMA / "fma_small" / "000" / "000005.mp3", duration_s=4.0)
    _, info = Masterer(REPO / "models" / "reference", "chain", echo_removal=False, level_model=str(out)).master_audio(audio, sr)
    assert np.isfinite(info["level_gain_db"]) and np.isfinite(info["predicted_lufs"])
    # a rerun with the same settings reuses the examples and gives the same trees
    capsys.readouterr()
    assert main(args) == 0
    assert "the same settings" in capsys.readouterr().out
    again = LevelTrees.load(out)
    np.testing.assert_array_equal(again.predict_features(examples["training_x"]), model.predict_features(examples["training_x"]))


def test_the_same_seed_gives_the_same_damage_and_features():
    audio, _ = read_audio(FMA / "fma_small" / "000" / "000005.mp3", duration_s=3.0)
    for damage in ("ours", "pedalboard", "compressor"):
        a, b = damage_crop(audio, damage, 3, "x:0"), damage_crop(audio, damage, 3, "x:0")
        np.testing.assert_array_equal(features_of(a), features_of(b))
        assert not np.array_equal(a, damage_crop(audio, damage, 4, "x:0"))


def test_the_clean_share_adds_undamaged_crops_without_moving_the_others():
    tracks = scan_corpus(FMA).tracks
    plans = {share: plan_jobs(tracks, 8, 3.0, ("ours", "pedalboard", "none"), 5, share) for share in (0.0, 0.5, 1.0)}
    damaged = {share: [(j.track_id, j.offset_s, j.damage) for j in jobs if j.damage != "none"] for share, jobs in plans.items()}
    assert damaged[0.0] == damaged[0.5] == damaged[1.0] and len(damaged[0.0]) == 2 * 8 * 5  # 5 clips of >= 3 s (the silent one is dropped later)
    clean = {share: sum(j.damage == "none" for j in jobs) for share, jobs in plans.items()}
    assert clean[0.0] == 0 and clean[1.0] == 8 * 5 and 0 < clean[0.5] < 8 * 5


@pytest.mark.parametrize("args", [["--crops-per-track", "0"], ["--crops-per-track", "2,3"], ["--val-crops-per-track", "x"],
                                  ["--seconds", "1"], ["--workers", "0"], ["--clean-share", "2"], ["--max-level-db", "0"]])
def test_bad_arguments_exit_2(tmp_path, capsys, args):
    assert main(["--audio", str(FMA), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "o").exists()


def test_a_corpus_without_a_usable_split_or_an_out_file_exits_2(tmp_path, capsys):
    assert main(["--audio", str(DATA / "music"), "--out", str(tmp_path / "o"), "--seconds", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "validation split" in err[0]  # the music folder's hash split has no validation track
    (tmp_path / "file").write_text("x")
    assert main(["--audio", str(FMA), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_the_shipped_level_model_and_its_committed_evaluation():
    """The model card's claim, from the committed evaluation of the default path (echo stage +
    this level model): on our damage it beats the input on MR-STFT, mel L1 and loudness error."""
    shipped = REPO / "models" / "spectral"
    assert (shipped / "model.pt").stat().st_size <= 25 * 1024 * 1024
    fit = json.loads((shipped / "level_fit.json").read_text())["validation"]
    assert fit["ours"]["head_lu"] < fit["ours"]["identity_lu"] and fit["pedalboard"]["head_lu"] < fit["pedalboard"]["identity_lu"]
    metrics = json.loads((shipped / "metrics.json").read_text())
    assert metrics["ours"]["config"]["level_model"].endswith("models/spectral")
    paths = {name: {k: v["mean"] for k, v in inv["metrics"].items()} for name, inv in metrics["ours"]["inversions"].items()}
    for measure in ("mrstft", "mel_l1_db", "loudness_err_lu"):
        assert paths["chain"][measure] < paths["identity"][measure], measure


def test_the_shipped_tree_level_model_is_the_default_and_beats_the_input_where_its_card_says():
    """models/level's card: on the validation songs it hears the original level better than
    leaving it alone on every damage but echo alone, and keeps clean masters within 0.5 LU."""
    from automaster.cli.repair import level_model_or_shipped

    shipped = REPO / "models" / "level"
    assert level_model_or_shipped(None) == str(shipped)
    assert (shipped / "trees.npz").stat().st_size <= 1024 * 1024
    model = LevelTrees.load(shipped)
    assert model.n_features == 66 + N_FEATURES and len(model.roots) == 300
    fit = json.loads((shipped / "level_fit.json").read_text())
    assert fit["tracks"]["validation"] >= 90
    val = fit["validation"]
    for damage in ("ours", "pedalboard", "compressor", "eq", "reverb"):
        assert val[damage]["model_lu"] < val[damage]["identity_lu"], damage
    assert val["none"]["model_lu"] < 0.5 and val["echo"]["model_lu"] < 1.0
