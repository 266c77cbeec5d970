"""The true-peak limiter and the loudness-target stage (automaster.dsp.limiter), on real music and
signals whose true peak is known."""

import numpy as np
import pytest

from automaster.dsp.limiter import master_loudness, true_peak_limit
from automaster.dsp.loudness import integrated_loudness, normalize_loudness, true_peak_dbtp

SR = 44100


def _sine(freq_hz: float, seconds: float, peak_dbfs: float, sr: int = SR, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return 10.0 ** (peak_dbfs / 20.0) * np.sin(2 * np.pi * freq_hz * t + phase)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="shape"):
        true_peak_limit(np.zeros((1, 2, 100)), SR)


# --------------------------------------------------------------------------- limiter


def test_limiter_holds_the_ceiling_on_boosted_music(songs):
    for song in songs:
        loud = (song * 10 ** (10 / 20)).astype(np.float32)
        assert true_peak_dbtp(loud, SR) > 0.0
        out = true_peak_limit(loud, SR, ceiling_dbtp=-1.0)
        assert out.shape == loud.shape and out.dtype == loud.dtype
        assert true_peak_dbtp(out, SR) <= -1.0
        # Gain only, between 0 and 1, aligned with the input: same signs, never louder.
        assert np.all(np.abs(out) <= np.abs(loud) * (1 + 1e-6))
        nz = np.abs(loud) > 1e-3
        assert np.all(np.sign(out[nz]) == np.sign(loud[nz]))
        # A limiter, not a normaliser: quiet passages keep (nearly) their level.
        assert integrated_loudness(out, SR) > integrated_loudness(song, SR) + 5.0


def test_limiter_holds_the_ceiling_on_a_clipped_square():
    square = np.clip(100.0 * _sine(441, 1.0, 0.0), -1.0, 1.0)  # Gibbs: true peak ~2 dB over 0 dBFS
    assert true_peak_dbtp(square, SR) > 1.0
    out = true_peak_limit(square, SR, ceiling_dbtp=-1.0)
    assert out.shape == square.shape
    assert true_peak_dbtp(out, SR) <= -1.0


def test_limiter_leaves_audio_below_the_ceiling_untouched(songs):
    for song in songs:
        quiet = song * np.float32(10 ** ((-3.0 - true_peak_dbtp(song, SR)) / 20))  # -3 dBTP
        out = true_peak_limit(quiet, SR, ceiling_dbtp=-1.0)
        assert np.array_equal(out, quiet)
        mono = true_peak_limit(quiet[0], SR, ceiling_dbtp=-1.0)
        assert mono.shape == quiet[0].shape and np.array_equal(mono, quiet[0])


def test_limiter_acts_only_around_a_peak():
    x = _sine(220, 3.0, -12.0)
    burst = slice(SR, SR + 441)  # 10 ms at +6 dBFS
    x[burst] *= 10 ** (18 / 20)
    out = true_peak_limit(x, SR, ceiling_dbtp=-1.0, lookahead_ms=5.0, release_ms=80.0)
    assert true_peak_dbtp(out, SR) <= -1.0
    lead = int(0.007 * SR)  # look-ahead 5 ms + hold 0.5 ms, and some margin
    np.testing.assert_array_equal(out[: SR - lead], x[: SR - lead])  # no gain change long before
    assert np.all(np.abs(out[SR - 10 : SR + 10]) <= 10 ** (-1 / 20))  # fully down at the onset
    np.testing.assert_array_equal(out[2 * SR + SR // 2 :], x[2 * SR + SR // 2 :])  # released to exactly 1
    # The release is gradual: 40 ms after the burst the gain is still recovering.
    after = SR + 441 + int(0.04 * SR)
    ratio = np.abs(out[after : after + 200]).max() / np.abs(x[after : after + 200]).max()
    assert 0.5 < ratio < 0.99


# --------------------------------------------------------------------------- the mastering stages


def test_master_loudness_on_real_music(songs):
    for song in songs:
        out, stats = master_loudness(song, SR, target_lufs=-14.0, ceiling_dbtp=-1.0)
        assert set(stats) == {"lufs_before", "lufs_after", "true_peak_before_dbtp", "true_peak_after_dbtp", "gain_db",
                              "limiter_max_reduction_db", "limiter_mean_reduction_db"}
        assert out.shape == song.shape and out.dtype == song.dtype
        assert stats["lufs_after"] == pytest.approx(-14.0, abs=0.5)
        assert stats["true_peak_after_dbtp"] <= -1.0
        assert true_peak_dbtp(out, SR) <= -1.0
        assert stats["lufs_before"] == pytest.approx(integrated_loudness(song, SR))
        assert stats["lufs_after"] == pytest.approx(integrated_loudness(out, SR))


def test_master_loudness_iterates_when_the_limiter_works_hard(songs):
    # -9 LUFS under -1 dBTP needs several dB of limiting: one plain pass would end short.
    song = songs[1]
    plain = true_peak_limit(normalize_loudness(song, SR, -9.0)[0], SR, -1.0)
    assert integrated_loudness(plain, SR) < -9.5
    out, stats = master_loudness(song, SR, target_lufs=-9.0, ceiling_dbtp=-1.0)
    assert stats["lufs_after"] == pytest.approx(-9.0, abs=0.5)
    assert stats["gain_db"] > -9.0 - stats["lufs_before"]
    assert stats["true_peak_after_dbtp"] <= -1.0
    # The limiter reports what it took off: several dB at the loudest peak, less on average.
    assert stats["limiter_max_reduction_db"] > 1.0
    assert 0.0 < stats["limiter_mean_reduction_db"] < stats["limiter_max_reduction_db"]


def test_master_loudness_stages_can_be_switched_off(songs):
    song = songs[0]
    same, stats = master_loudness(song, SR, target_lufs=None, ceiling_dbtp=None)
    assert np.array_equal(same, song) and stats["gain_db"] == 0.0
    assert stats["limiter_max_reduction_db"] == stats["limiter_mean_reduction_db"] == 0.0
    normalised, stats = master_loudness(song, SR, target_lufs=-30.0, ceiling_dbtp=None)
    assert stats["lufs_after"] == pytest.approx(-30.0, abs=0.1)
    silence, stats = master_loudness(np.zeros((2, SR), np.float32), SR, -14.0, -1.0)
    assert not silence.any() and stats["gain_db"] == 0.0 and stats["lufs_after"] == float("-inf")
