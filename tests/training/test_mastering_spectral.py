"""The spectral restorer in the mastering job: an untrained one is the identity at any rate; the
committed level head's gain is applied by the restore preset's loudness stage, scaled by amount."""

from __future__ import annotations

import numpy as np
import pytest

from automaster.audio import read_audio
from automaster.config import load_config
from automaster.dsp.loudness import integrated_loudness
from automaster.mastering import Masterer
from automaster.model.checkpoint import build_model, save_checkpoint
from tests.conftest import DATA, REPO


@pytest.mark.parametrize("rate", [44100, 32000])
def test_an_untrained_restorer_masters_to_the_identity(tmp_path, music_files, rate):
    config = load_config(overrides=["model.mode=spectral", "model.spectral_width=4", "model.spectral_depth=1"])
    save_checkpoint(tmp_path / "m", build_model(config), config)
    audio, sr = read_audio(music_files[0], sample_rate=rate, duration_s=2.5)
    mastered, info = Masterer(tmp_path / "m", "mask", echo_removal=False, chunk_s=1.2, context_s=0.3).master_audio(audio, sr)
    assert info["level_gain_db"] == 0.0 and info["predicted_lufs"] == info["lufs_before"]
    np.testing.assert_allclose(mastered, audio, atol=2e-4)


SPECTRAL_MODEL = REPO / "models" / "spectral"


@pytest.fixture(scope="module")
def fma_clip() -> tuple[np.ndarray, int]:
    return read_audio(DATA / "fma" / "fma_small" / "000" / "000005.mp3", duration_s=6.0)


@pytest.mark.parametrize("amount", [1.0, 0.5])
def test_the_level_head_gain_is_applied_by_the_loudness_stage_times_amount(fma_clip, amount):
    audio, sr = fma_clip
    mastered, info = Masterer(SPECTRAL_MODEL, "mask", echo_removal=False, amount=amount).master_audio(audio, sr)
    assert abs(info["level_gain_db"]) > 1.0  # the committed level head raises this clip
    applied_db = integrated_loudness(mastered, sr) - integrated_loudness(audio, sr)
    assert applied_db == pytest.approx(amount * info["level_gain_db"], abs=0.05)
    assert info["loudness_gain_db"] == pytest.approx(amount * info["level_gain_db"], abs=0.05)
    assert info["predicted_lufs"] == pytest.approx(info["lufs_before"] + info["level_gain_db"], abs=1e-9)  # not scaled


@pytest.mark.parametrize(("preset", "expected_lufs"), [("streaming", -14.0), ("none", None)])
def test_a_loudness_target_or_no_loudness_stage_leaves_the_level_head_unused(fma_clip, preset, expected_lufs):
    audio, sr = fma_clip
    mastered, info = Masterer(SPECTRAL_MODEL, "mask", echo_removal=False, preset=preset).master_audio(audio, sr)
    assert abs(info["level_gain_db"]) > 1.0
    lufs = integrated_loudness(mastered, sr)
    if expected_lufs is None:  # the input's level, not moved by the head's gain
        assert lufs == pytest.approx(integrated_loudness(audio, sr), abs=0.05)
    else:  # the preset's tolerance (the limiter's), well inside the head's gain
        assert lufs == pytest.approx(expected_lufs, abs=0.3)
