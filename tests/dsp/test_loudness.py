import math

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import torch

from automaster.dsp.loudness import (
    _channel_weights,
    _gated_loudness,
    _peak_segments,
    _true_peak_linear,
    integrated_loudness,
    loudness_gain_db,
    master_loudness,
    normalize_loudness,
    oversampling_factor,
    true_peak_dbtp,
    true_peak_limit,
)

SR = 44100


def _sine(freq_hz: float, seconds: float, peak_dbfs: float, sr: int = SR, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return 10.0 ** (peak_dbfs / 20.0) * np.sin(2 * np.pi * freq_hz * t + phase)


@pytest.fixture(scope="module")
def songs(music_files) -> list[np.ndarray]:
    """Both real stereo songs, 6 s each, float32 ``(2, T)``."""
    out = []
    for path in music_files:
        if path.suffix != ".flac":
            continue
        y, sr = sf.read(path, dtype="float32", frames=6 * SR, always_2d=True)
        assert sr == SR
        out.append(np.ascontiguousarray(y.T))
    assert len(out) >= 2
    return out


# --------------------------------------------------------------------------- loudness


def test_sine_997hz_reads_bs1770_values():
    mono = _sine(997, 10, -20.0)
    # BS.1770: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS.
    assert integrated_loudness(mono, SR) == pytest.approx(-23.01, abs=0.1)
    assert integrated_loudness(np.stack([mono, mono]), SR) == pytest.approx(-20.0, abs=0.1)
    assert integrated_loudness(torch.from_numpy(mono), SR) == integrated_loudness(mono, SR)


def test_equals_pyloudnorm_on_real_music(songs):
    for song in songs:
        ref = pyloudnorm.Meter(SR).integrated_loudness(song.T.astype(np.float64))
        assert integrated_loudness(song, SR) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("n_channels", [1, 2, 5])
def test_own_gating_agrees_with_pyloudnorm(songs, n_channels):
    # The vectorised gating (used for short clips and > 5 channels) against the reference.
    a, b = songs[0].astype(np.float64), songs[1].astype(np.float64)
    x = np.concatenate([a, b, 0.3 * a[:1]])[:n_channels]
    ref = pyloudnorm.Meter(SR).integrated_loudness(x.T)
    assert _gated_loudness(x, SR, _channel_weights(n_channels)) == pytest.approx(ref, abs=0.02)


def test_silence_is_minus_inf_and_is_not_normalised():
    silence = np.zeros((2, SR), dtype=np.float32)
    assert integrated_loudness(silence, SR) == float("-inf")
    assert integrated_loudness(_sine(997, 2, -90.0), SR) == float("-inf")  # below the -70 LUFS gate
    assert loudness_gain_db(silence, SR, -14.0) == 0.0
    out, gain = normalize_loudness(silence, SR, -14.0)
    assert gain == 0.0 and np.array_equal(out, silence)


def test_short_clip_is_one_block():
    long = integrated_loudness(_sine(997, 10, -20.0), SR)
    short = integrated_loudness(_sine(997, 0.2, -20.0), SR)  # half a gating block
    assert math.isfinite(short)
    assert short == pytest.approx(long, abs=0.1)


def test_more_than_five_channels_excludes_lfe():
    sine = _sine(997, 3, -20.0)
    six = np.tile(sine, (6, 1))
    mono = integrated_loudness(sine, SR)
    # L, R, C at 1, LFE at 0, Ls, Rs at 1.41.
    assert integrated_loudness(six, SR) == pytest.approx(mono + 10 * np.log10(5.82), abs=0.02)
    louder_lfe = six.copy()
    louder_lfe[3] *= 4.0
    assert integrated_loudness(louder_lfe, SR) == pytest.approx(integrated_loudness(six, SR), abs=1e-9)
    eight = np.tile(sine, (8, 1))
    assert integrated_loudness(eight, SR) == pytest.approx(mono + 10 * np.log10(7.82), abs=0.02)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"channels first.*\(44100, 2\)"):
        integrated_loudness(np.zeros((SR, 2)), SR)
    with pytest.raises(ValueError, match="NaN"):
        true_peak_dbtp(np.array([0.0, np.nan, 0.0]), SR)
    with pytest.raises(ValueError, match="shape"):
        true_peak_limit(np.zeros((1, 2, 100)), SR)


@pytest.mark.parametrize("target", [-14.0, -23.0])
def test_normalisation_hits_target_on_real_music(songs, target):
    for song in songs:
        before = integrated_loudness(song, SR)
        out, gain = normalize_loudness(song, SR, target)
        assert out.shape == song.shape and out.dtype == song.dtype
        assert gain == pytest.approx(target - before)
        assert integrated_loudness(out, SR) == pytest.approx(target, abs=0.1)


# --------------------------------------------------------------------------- true peak


def test_true_peak_of_quarter_rate_sine_at_45_degrees():
    x = _sine(SR / 4, 1.0, 0.0, phase=np.pi / 4)  # samples at +-0.707: the peaks fall between them
    sample_peak = 20 * np.log10(np.abs(x).max())
    assert sample_peak == pytest.approx(-3.01, abs=0.01)
    assert true_peak_dbtp(x, SR) == pytest.approx(0.0, abs=0.2)


def test_true_peak_is_never_below_sample_peak(songs):
    for song in songs:
        assert true_peak_dbtp(song, SR) >= 20 * np.log10(np.abs(song).max()) - 1e-9
    assert true_peak_dbtp(np.zeros(100), SR) == float("-inf")


def test_true_peak_matches_ideal_interpolation_on_music(songs):
    # The 4x points against band-limited (FFT) interpolation of the same samples: the meter reads
    # the ideal peaks of those points to ~0.01 dB.
    for song in songs:
        x = song[:, SR : 2 * SR].astype(np.float64)
        n = x.shape[1]
        spec = np.fft.rfft(x, axis=1)
        ideal = np.fft.irfft(np.concatenate([spec, np.zeros((2, 3 * n // 2), complex)], axis=1), 4 * n, axis=1) * 4
        inner = slice(4 * 2000, 4 * (n - 2000))  # away from the circular edges of the FFT
        ref = np.abs(ideal[:, inner]).max()
        ours = _peak_segments(x, SR)[2000 : n - 2000].max()
        assert 20 * np.log10(ours / ref) == pytest.approx(0.0, abs=0.01)


def test_skipping_true_peak_equals_the_full_envelope(songs):
    rng = np.random.default_rng(0)
    for x in (*songs, np.clip(songs[0] * 8, -1, 1), (rng.standard_normal((2, SR)) * 0.1).astype(np.float32)):
        assert _true_peak_linear(x, SR) == float(_peak_segments(x, SR).max())


def test_oversampling_follows_annex_2():
    assert [oversampling_factor(sr) for sr in (44100, 48000, 88200, 96000, 176400, 192000)] == [4, 4, 2, 2, 1, 1]
    x = _sine(1000, 0.5, -6.0, sr=192000)
    assert true_peak_dbtp(x, 192000) == pytest.approx(20 * np.log10(np.abs(x).max()), abs=1e-12)


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
        assert set(stats) == {"lufs_before", "lufs_after", "true_peak_before_dbtp", "true_peak_after_dbtp", "gain_db"}
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


def test_master_loudness_stages_can_be_switched_off(songs):
    song = songs[0]
    same, stats = master_loudness(song, SR, target_lufs=None, ceiling_dbtp=None)
    assert np.array_equal(same, song) and stats["gain_db"] == 0.0
    normalised, stats = master_loudness(song, SR, target_lufs=-30.0, ceiling_dbtp=None)
    assert stats["lufs_after"] == pytest.approx(-30.0, abs=0.1)
    silence, stats = master_loudness(np.zeros((2, SR), np.float32), SR, -14.0, -1.0)
    assert not silence.any() and stats["gain_db"] == 0.0 and stats["lufs_after"] == float("-inf")
