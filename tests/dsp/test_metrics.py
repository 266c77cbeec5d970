import numpy as np
import pytest

from automaster.dsp.metrics import mel_l1_db, peak_dbfs, si_sdr


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
