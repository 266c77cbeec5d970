"""A level model sets the restore preset's level for a restorer without a level head of its own:
the committed models/reference with models/level (the shipped trees) or models/spectral (the
previous one, the spectral restorer's level head)."""

from __future__ import annotations

import numpy as np
import pytest

from automaster.audio import read_audio
from automaster.cli import main
from automaster.dsp.loudness import integrated_loudness
from automaster.mastering import Masterer, MasteringError
from tests.conftest import DATA, REPO

REFERENCE, SPECTRAL, LEVEL = REPO / "models" / "reference", REPO / "models" / "spectral", REPO / "models" / "level"


@pytest.fixture(scope="module")
def quiet_clip() -> tuple[np.ndarray, int]:
    """A real clip turned 12 dB down: far below any master's loudness."""
    audio, sr = read_audio(DATA / "fma" / "fma_small" / "000" / "000005.mp3", duration_s=8.0)
    return (audio * np.float32(10 ** (-12 / 20))).astype(np.float32), sr


@pytest.mark.parametrize("level", [LEVEL, SPECTRAL])
def test_the_level_model_brings_the_chain_output_to_the_predicted_loudness(quiet_clip, level):
    audio, sr = quiet_clip
    mastered, info = Masterer(REFERENCE, "chain", echo_removal=False, level_model=str(level)).master_audio(audio, sr)
    # it hears that a 12 dB cut is too quiet for a master, if not by how much (+2.96 dB for the
    # trees, +4.32 for models/spectral; MODEL_CARD.md: neither tells a quiet master from a damaged one)
    assert info["level_gain_db"] > 2.0
    assert info["predicted_lufs"] == pytest.approx(integrated_loudness(audio, sr) + info["level_gain_db"], abs=1e-6)
    assert integrated_loudness(mastered, sr) == pytest.approx(info["predicted_lufs"], abs=0.3)
    assert info["true_peak_after_dbtp"] <= -0.95


@pytest.mark.parametrize("model, inversion", [(REFERENCE, "chain"), (SPECTRAL, "mask")])
def test_a_clip_shorter_than_the_spectral_stft_is_mastered(tmp_path, model, inversion):
    """100 samples (a tiny file in a user's folder): it failed with 'ValueError: need at least
    1025 samples' under the shipped level model, and with the spectral model itself; it is
    mastered like any other."""
    from automaster.pipelines.master import master_file
    from tests.audio_fixtures import make_bad_inputs

    tiny = make_bad_inputs(tmp_path / "in")["hundred_samples"]
    status = master_file(Masterer(model, inversion, level_model=str(LEVEL)), str(tiny), str(tmp_path / "out"), tiny.name)
    assert status["status"] == "ok", status["reason"]
    audio, _ = read_audio(tmp_path / "out" / "audio" / tiny.name)
    assert audio.shape[-1] == 100 and np.isfinite(audio).all()


def test_without_a_level_model_the_restored_level_is_kept(quiet_clip):
    audio, sr = quiet_clip
    mastered, info = Masterer(REFERENCE, "chain", echo_removal=False).master_audio(audio, sr)
    assert "level_gain_db" not in info and "predicted_lufs" not in info
    assert integrated_loudness(mastered, sr) == pytest.approx(integrated_loudness(audio, sr), abs=0.5)


def test_a_level_model_without_a_level_head_is_refused():
    with pytest.raises(MasteringError, match="no level head"):
        Masterer(REFERENCE, "chain", level_model=str(REFERENCE))


def test_a_restorer_with_its_own_level_head_ignores_the_level_model(quiet_clip):
    audio, sr = quiet_clip
    own = Masterer(SPECTRAL, "mask", echo_removal=False).master_audio(audio, sr)
    given = Masterer(SPECTRAL, "mask", echo_removal=False, level_model=str(REFERENCE)).master_audio(audio, sr)
    np.testing.assert_array_equal(own[0], given[0])


def test_a_missing_level_model_exits_2_in_one_line_before_anything_starts(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.mp3").write_bytes((DATA / "fma" / "fma_small" / "000" / "000005.mp3").read_bytes())
    code = main(["master", "--input", str(folder), "--out", str(tmp_path / "out"), "--level-model", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--level-model" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["trees", "spectral"])
def test_an_output_folder_remembers_the_level_model_weights(tmp_path, capsys, kind):
    import shutil

    import torch

    from automaster.model.level_trees import LevelTrees

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.mp3").write_bytes((DATA / "fma" / "fma_small" / "000" / "000005.mp3").read_bytes())
    level = tmp_path / "level"
    shutil.copytree(LEVEL if kind == "trees" else SPECTRAL, level)
    args = ["master", "--input", str(folder), "--out", str(tmp_path / "out"), "--level-model", str(level),
            "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    assert main(args) == 0
    capsys.readouterr()
    if kind == "trees":  # other trees, same path
        trees = LevelTrees.load(level)
        trees.baseline += 1.0
        trees.save(level)
    else:
        payload = torch.load(level / "model.pt", weights_only=True)
        payload["model"]["level_mlp.4.bias"] = payload["model"]["level_mlp.4.bias"] + 1.0  # other weights, same path
        torch.save(payload, level / "model.pt")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "level_model_sha256" in err[0]
