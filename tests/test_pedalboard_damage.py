"""The pedalboard degrader: seeded, never clipped, really damaging, and its parameter mapping
onto ours checked against pedalboard's own impulse response."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from automaster.dsp.mel import melspectrogram
from automaster.dsp.metrics import mel_l1_db
from automaster.dsp.scale import power_to_db
from automaster.effects.params import PARAM_NAMES
from automaster.pedalboard_damage import MAPPED_PARAMS, build_board, draw_settings, make_rng, mapped_params, pedalboard_degrade
from tests.audio_fixtures import D01

SR = 44100


@pytest.fixture(scope="module")
def music():
    audio, sr = sf.read(D01, frames=3 * SR, dtype="float32", always_2d=True)
    assert sr == SR
    audio = np.ascontiguousarray(audio.T)  # (2, T)
    return audio * np.float32(0.999 / np.abs(audio).max())  # full scale: the headroom gain must act


def _mel_db(audio: np.ndarray) -> torch.Tensor:
    return power_to_db(melspectrogram(torch.from_numpy(np.ascontiguousarray(audio))))


def test_same_seed_same_audio_other_seed_or_track_differs(music):
    a = pedalboard_degrade(music, SR, seed=3, track_id="000010")
    b = pedalboard_degrade(music, SR, seed=3, track_id="000010")
    assert np.array_equal(a.audio, b.audio) and a.settings == b.settings and a.params == b.params
    assert not np.array_equal(a.audio, pedalboard_degrade(music, SR, seed=4, track_id="000010").audio)
    assert not np.array_equal(a.audio, pedalboard_degrade(music, SR, seed=3, track_id="000011").audio)


@pytest.mark.parametrize("channels", [1, 2])
def test_shape_kept_never_clipped_and_damage_measurable(music, channels):
    clean = music[:channels]
    l1 = []
    for track in ("a", "b", "c", "d"):
        out = pedalboard_degrade(clean, SR, seed=0, track_id=track)
        assert out.audio.shape == clean.shape and out.audio.dtype == np.float32
        peak = float(np.abs(out.audio).max())
        assert peak <= 0.999 + 1e-6
        headroom = out.settings["headroom_gain_db"]["gain_db"]
        assert headroom <= 0.0
        if headroom < 0.0:  # the peak was brought to the ceiling by a gain, not cut
            assert peak == pytest.approx(0.999, abs=1e-4)
        l1.append(mel_l1_db(_mel_db(out.audio), _mel_db(clean)))
    assert min(l1) > 1.0, l1  # every clip audibly damaged (dB per mel bin)


def test_mapped_parameters_use_our_names_and_ranges(music):
    out = pedalboard_degrade(music, SR, seed=0, track_id="x")
    assert set(out.params) == set(MAPPED_PARAMS) <= set(PARAM_NAMES)
    assert 80.0 <= out.params["eq_low_fc_hz"] <= 800.0 and 1500.0 <= out.params["eq_high_fc_hz"] <= 12000.0
    assert -36.0 <= out.params["comp_threshold_db"] <= -12.0 and 1.0 <= out.params["comp_ratio"] <= 8.0
    assert 0.05 <= out.params["echo_delay_s"] <= 0.5 and 0.0 <= out.params["echo_gain"] <= 0.5
    assert 0.0 <= out.params["comp_makeup_db"] <= 6.0 and out.params["output_gain_db"] <= 0.0


def test_delay_and_gain_mapping_matches_pedalboards_impulse_response():
    """With EQ, compressor, reverb and feedback neutral, an impulse comes out as the direct sound
    at ``comp_makeup_db + output_gain_db`` and one echo ``echo_gain`` times it, ``echo_delay_s``
    later: the mapped parameters drive our chain to the same response."""
    settings = draw_settings(make_rng(0, "impulse"), clip_rms_db=-20.0)
    for eq in ("low_shelf", "low_peak", "high_peak", "high_shelf"):
        settings[eq]["gain_db"] = 0.0
    settings["compressor"].update(threshold_db=0.0, ratio=1.0)
    settings["reverb"].update(wet_level=0.0, dry_level=0.5)
    settings["delay"]["feedback"] = 0.0
    settings["gain"]["gain_db"] = -2.0
    impulse = np.zeros((1, SR), np.float32)
    impulse[0, 1000] = 1.0
    response = build_board(settings)(impulse, SR)[0]
    mapped = mapped_params(settings, SR, headroom_gain_db=0.0)
    delay = int(round(mapped["echo_delay_s"] * SR))
    assert mapped["comp_makeup_db"] == pytest.approx(-2.0 + 20 * np.log10(1 - settings["delay"]["mix"]))
    direct = 10.0 ** ((mapped["comp_makeup_db"] + mapped["output_gain_db"]) / 20.0)
    assert response[1000] == pytest.approx(direct, rel=1e-4)
    assert response[1000 + delay] == pytest.approx(mapped["echo_gain"] * direct, rel=1e-4)
    rest = np.delete(response, [1000, 1000 + delay])
    assert np.abs(rest).max() < 1e-4  # nothing else: neutral EQ, compressor and reverb


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(C, T\)"):
        pedalboard_degrade(np.zeros(100, np.float32), SR, 0, "x")
    with pytest.raises(ValueError, match="NaN"):
        pedalboard_degrade(np.full((1, 100), np.nan, np.float32), SR, 0, "x")
