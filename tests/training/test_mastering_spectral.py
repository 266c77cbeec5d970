"""The spectral restorer in the mastering job: an untrained one is the identity at any rate."""

from __future__ import annotations

import numpy as np
import pytest

from automaster.audio import read_audio
from automaster.config import load_config
from automaster.mastering import Masterer
from automaster.model.checkpoint import build_model, save_checkpoint


@pytest.mark.parametrize("rate", [44100, 32000])
def test_an_untrained_restorer_masters_to_the_identity(tmp_path, music_files, rate):
    config = load_config(overrides=["model.mode=spectral", "model.spectral_width=4", "model.spectral_depth=1"])
    save_checkpoint(tmp_path / "m", build_model(config), config)
    audio, sr = read_audio(music_files[0], sample_rate=rate, duration_s=2.5)
    mastered, info = Masterer(tmp_path / "m", "mask", echo_removal=False, chunk_s=1.2, context_s=0.3).master_audio(audio, sr)
    assert info["level_gain_db"] == 0.0 and info["predicted_lufs"] == info["lufs_before"]
    np.testing.assert_allclose(mastered, audio, atol=2e-4)
