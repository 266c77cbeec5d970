import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from automaster.dsp.metrics import loudness_error_lu, mel_l1_db, peak_dbfs, si_sdr
from tests.audio_fixtures import D01

SR = 44100


def test_si_sdr_of_a_scaled_copy_is_very_high():
    x = np.random.default_rng(0).standard_normal(44100)
    assert si_sdr(0.3 * x, x) > 100.0


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_si_sdr_of_added_noise_is_the_noise_level(snr_db):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200_000)
    noise = rng.standard_normal(200_000)
    noise *= np.sqrt((x @ x) / (noise @ noise)) * 10 ** (-snr_db / 20)
    assert si_sdr(x + noise, x) == pytest.approx(snr_db, abs=0.1)


def test_si_sdr_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        si_sdr(np.zeros(3), np.zeros(4))


def test_mel_l1_and_peak():
    a = np.zeros((128, 10))
    assert mel_l1_db(a, a + 3.0) == pytest.approx(3.0)
    assert mel_l1_db(a, np.ones((128, 12))) == pytest.approx(1.0)  # cropped to 10 frames
    assert peak_dbfs(np.array([0.5, -1.0])) == pytest.approx(0.0)
    assert peak_dbfs(np.array([0.1])) == pytest.approx(-20.0)


def test_si_sdr_of_a_scaled_multichannel_copy_is_very_high():
    x = np.random.default_rng(2).standard_normal((2, 44100))
    assert si_sdr(-2.0 * x, x) > 60.0


@pytest.fixture(scope="module")
def song():
    audio, sr = sf.read(D01, frames=4 * SR, dtype="float64", always_2d=True)
    assert sr == SR
    return np.ascontiguousarray(audio.T)  # (2, T)


def test_loudness_error_matches_pyloudnorm(song):
    meter = pyloudnorm.Meter(SR)
    other = 0.5 * song + 0.01 * np.random.default_rng(3).standard_normal(song.shape)
    expected = abs(meter.integrated_loudness(other.T) - meter.integrated_loudness(song.T))
    assert loudness_error_lu(other, song, SR) == pytest.approx(expected, abs=1e-6)
    assert loudness_error_lu(song, other, SR) == pytest.approx(expected, abs=1e-6)  # symmetric
    given = loudness_error_lu(other, None, SR, reference_lufs=meter.integrated_loudness(song.T))
    assert given == pytest.approx(expected, abs=1e-6)


def test_loudness_error_of_a_gain_is_the_gain_and_silence_is_nan(song):
    assert loudness_error_lu(song * 10 ** (-6.0 / 20), song, SR) == pytest.approx(6.0, abs=1e-6)
    assert loudness_error_lu(song, song, SR) == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(loudness_error_lu(np.zeros_like(song), song, SR))
    with pytest.raises(ValueError, match="reference"):
        loudness_error_lu(song, None, SR)
