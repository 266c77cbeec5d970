import librosa
import numpy as np
import pytest
import torch

from automaster.dsp.mel import mel_db_rows, mel_filterbank, mel_from_power, mel_to_linear, melspectrogram
from automaster.dsp.scale import (
    db_to_power,
    denormalize_fixed,
    denormalize_minmax,
    normalize_fixed,
    normalize_minmax,
    power_to_db,
)
from automaster.dsp.stft import istft, n_frames, stft, stft_rows


@pytest.fixture(scope="module")
def music(music_files):
    y, sr = librosa.load(music_files[0], sr=44100, mono=True, duration=4.0)
    return y.astype(np.float32)


def test_mel_equals_librosa_on_real_music(music):
    ref = librosa.feature.melspectrogram(y=music, sr=44100, n_fft=2048, hop_length=512, n_mels=128)
    ours = melspectrogram(torch.from_numpy(music)).numpy()
    assert ours.shape == ref.shape == (128, n_frames(music.size))
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * ref.max())


@pytest.mark.parametrize("length", [512, 1000, 44100])
def test_stft_matches_librosa_and_inverts(length):
    x = np.random.default_rng(0).standard_normal(length).astype(np.float32) * 0.1
    ref = librosa.stft(x, n_fft=2048, hop_length=512)
    ours = stft(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    back = istft(torch.from_numpy(ours), length=length).numpy()
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_mel_is_batched():
    x = torch.randn(3, 2, 8000) * 0.1
    batched = melspectrogram(x)
    assert batched.shape == (3, 2, 128, n_frames(8000))
    torch.testing.assert_close(batched[1, 0], melspectrogram(x[1, 0]))


def test_filterbank_is_librosas():
    np.testing.assert_array_equal(mel_filterbank().numpy(), librosa.filters.mel(sr=44100, n_fft=2048, n_mels=128))


def test_mel_to_linear_roundtrips_through_the_filterbank():
    power = torch.rand(1025, 5)
    mel = mel_filterbank() @ power
    linear = mel_to_linear(mel)
    assert linear.shape == (1025, 5) and float(linear.min()) >= 0.0
    back = mel_filterbank() @ linear
    assert float((back - mel).norm() / mel.norm()) < 0.1


def test_db_uses_eps_floor_and_inverts():
    p = torch.tensor([0.0, 1e-7, 1.0, 100.0])
    db = power_to_db(p)
    assert db.tolist() == pytest.approx([-60.0, -60.0, 0.0, 20.0])
    assert db_to_power(db[2:]).tolist() == pytest.approx([1.0, 100.0])
    ref = librosa.power_to_db(p.numpy(), ref=1.0, amin=1e-6, top_db=None)
    np.testing.assert_allclose(db.numpy(), ref, atol=1e-5)


def test_fixed_normalisation_keeps_level_and_inverts():
    db = torch.tensor([[-60.0, -20.0, 0.0, 40.0]])
    u = normalize_fixed(db)
    assert u.tolist()[0] == pytest.approx([0.0, 0.4, 0.6, 1.0])
    torch.testing.assert_close(denormalize_fixed(u), db)
    # a 6 dB quieter copy maps elsewhere: level survives
    assert not torch.allclose(normalize_fixed(db - 6.0), u)


def test_minmax_normalisation_hides_level_but_inverts_with_stats():
    db = torch.randn(2, 1, 128, 10) * 10
    u, lo, hi = normalize_minmax(db)
    assert float(u.min()) == pytest.approx(0.0) and float(u.max()) == pytest.approx(1.0)
    torch.testing.assert_close(denormalize_minmax(u, lo, hi), db)
    u_quiet, _, _ = normalize_minmax(db - 6.0)
    torch.testing.assert_close(u_quiet, u)  # level is gone: why it is not the default


@pytest.mark.parametrize("sample_rate,n_mels", [(44100, 128), (22050, 64)])
def test_mel_db_rows_equals_the_torch_mel_in_db(music, sample_rate, n_mels):
    x = np.stack([music, music * 1e-4])  # the quiet row reaches the dB floor in places
    x[1, :4096] = 0.0
    rows = stft_rows(x)  # (2, F, bins)
    ours = mel_db_rows(rows, sample_rate, n_mels)
    ref = power_to_db(mel_from_power(stft(torch.from_numpy(x)).abs().square(), sample_rate, n_mels)).numpy()
    assert ours.shape == ref.shape == (2, n_mels, n_frames(music.size)) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    assert ours[1, :, 0].max() == pytest.approx(-60.0)  # 10 log10(1e-6) in digital silence
    with pytest.raises(ValueError, match="complex"):
        mel_db_rows(np.abs(rows))
