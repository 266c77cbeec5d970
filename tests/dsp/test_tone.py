"""Tone profiles, the tone-matching EQ and tone error, on real music and analytic signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soxr

from automaster.audio import read_audio
from automaster.dsp import tone
from tests.conftest import DATA

SR = 44100


@pytest.fixture(scope="module")
def brahms() -> np.ndarray:
    audio, sr = read_audio(str(DATA / "music" / "d01_librosa_brahms_hungarian_dance_5.flac"))
    assert sr == SR
    return audio


@pytest.fixture(scope="module")
def fairy() -> np.ndarray:
    audio, sr = read_audio(str(DATA / "music" / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac"))
    assert sr == SR
    return audio


def test_identical_profiles_have_zero_tone_error(brahms):
    p = tone.tone_profile(brahms, SR)
    assert tone.tone_error_db(p, p) == 0.0


def test_tone_error_ignores_level(brahms):
    """Loudness matching comes first: a quieter copy sounds the same."""
    p = tone.tone_profile(brahms, SR)
    quiet = tone.tone_profile(brahms * np.float32(10 ** (-12 / 20)), SR)
    assert tone.tone_error_db(quiet, p) < 0.01


def test_profile_does_not_depend_on_sample_rate(brahms):
    at48 = soxr.resample(brahms.T, SR, 48000).T
    err = tone.tone_error_db(tone.tone_profile(at48, 48000), tone.tone_profile(brahms, SR))
    assert err < 0.3


def test_flat_curve_is_identity(brahms):
    zero = np.zeros_like(tone.GRID_HZ)
    y = tone.apply_tone_eq(brahms, SR, zero, zero)
    assert y.shape == brahms.shape
    assert np.max(np.abs(y - brahms)) < 1e-3


@pytest.mark.parametrize("sr", [44100, 48000])
def test_constant_curve_gains_a_sine_exactly(sr):
    t = np.arange(sr) / sr
    x = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[None]
    y = tone.apply_tone_eq(x, sr, np.full_like(tone.GRID_HZ, 6.0), np.zeros_like(tone.GRID_HZ))
    mid = slice(sr // 4, 3 * sr // 4)  # away from the edges
    gain_db = 20 * math.log10(np.abs(y[0, mid]).max() / np.abs(x[0, mid]).max())
    assert gain_db == pytest.approx(6.0, abs=0.05)


def test_matching_lowers_tone_error_and_moves_width(brahms, fairy):
    ref = tone.tone_profile(fairy, SR)
    y, info = tone.match_tone(brahms, SR, ref)
    assert y.shape == brahms.shape and y.dtype == np.float32
    assert info["tone_error_after_db"] < 0.5 * info["tone_error_before_db"]
    gap_before = abs(info["width_before_db"] - ref.width_db)
    gap_after = abs(info["width_after_db"] - ref.width_db)
    assert gap_after < 0.5 * gap_before


def test_mono_input_gets_no_side(brahms, fairy):
    mono = brahms.mean(axis=0, keepdims=True)
    y, info = tone.match_tone(mono, SR, tone.tone_profile(fairy, SR))
    assert y.shape == mono.shape
    assert info["side_eq_db"] == [0.0, 0.0]
    assert info["tone_error_after_db"] < info["tone_error_before_db"]


def test_silence_stays_silence(fairy):
    silence = np.zeros((2, SR), np.float32)
    y, info = tone.match_tone(silence, SR, tone.tone_profile(fairy, SR))
    assert not np.any(y) and info["applied"] is False
    assert math.isnan(tone.tone_error_db(tone.tone_profile(silence, SR), tone.tone_profile(fairy, SR)))


def test_width_of_mono_and_uncorrelated():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, SR)).astype(np.float32)
    assert tone.stereo_width_db(noise[:1]) == -math.inf
    assert tone.stereo_width_db(np.stack([noise[0], noise[0]])) == -math.inf
    assert tone.stereo_width_db(noise) == pytest.approx(0.0, abs=0.1)


def test_bad_shape_is_named():
    with pytest.raises(ValueError, match="expected \\(C, T\\)"):
        tone.tone_profile(np.zeros((2, 2, 10)), SR)
