"""The frame-major numpy STFT twins: the same numbers as the torch STFT, any n_fft/hop, float64."""

import numpy as np
import pytest
import torch

from automaster.dsp.stft import istft, istft_rows, n_frames, power_rows, stft, stft_rows


@pytest.mark.parametrize("length", [300, 2048, 44100 + 77])
@pytest.mark.parametrize("n_fft,hop", [(2048, 512), (372, 93), (2176, 544)])
def test_rows_equal_the_torch_stft_and_istft(length, n_fft, hop):
    x = np.random.default_rng(length).standard_normal((2, length)).astype(np.float32) * 0.1
    ref = stft(torch.from_numpy(x), n_fft, hop).numpy()  # (2, K, F)
    rows = stft_rows(x, n_fft, hop)
    assert rows.shape == (2, n_frames(length, hop), n_fft // 2 + 1) and rows.dtype == np.complex64
    np.testing.assert_allclose(rows.transpose(0, 2, 1), ref, atol=5e-5)
    back = istft_rows(rows, length, n_fft, hop)
    np.testing.assert_allclose(back, istft(torch.from_numpy(ref), length, n_fft, hop).numpy(), atol=2e-6)
    np.testing.assert_allclose(back, x, atol=2e-6)
    longer = istft_rows(rows, length + 3 * n_fft, n_fft, hop)  # zeros where no frame reaches
    np.testing.assert_allclose(longer[:, :length], back, atol=1e-7)
    assert longer.shape == (2, length + 3 * n_fft) and not longer[:, length + n_fft :].any()


def test_float64_and_power():
    x = np.random.default_rng(0).standard_normal((1, 5000))
    rows = stft_rows(x)
    assert rows.dtype == np.complex128
    np.testing.assert_allclose(istft_rows(rows, 5000), x, atol=1e-12)
    np.testing.assert_allclose(power_rows(rows), np.abs(rows) ** 2, rtol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        stft_rows(x[0])


def test_istft_rows_gain_equals_masking_first():
    x = np.random.default_rng(1).standard_normal((4, 9000)).astype(np.float32)
    rows = stft_rows(x)
    before = rows.copy()
    gain = np.random.default_rng(2).uniform(0.5, 2.0, (2, *rows.shape[1:])).astype(np.float32)  # rows 0-1, 2-3
    masked = rows * np.repeat(gain, 2, axis=0)
    np.testing.assert_allclose(istft_rows(rows, 9000, gain=gain), istft_rows(masked, 9000), atol=1e-6)
    assert np.array_equal(rows, before)
    with pytest.raises(ValueError, match="gain"):
        istft_rows(rows, 9000, gain=gain[:, :3])
