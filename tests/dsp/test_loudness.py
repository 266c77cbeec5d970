import math

import numpy as np
import pyloudnorm
import pytest
import torch

from automaster.dsp.loudness import (
    _channel_weights,
    _gated_loudness,
    _peak_segments,
    _true_peak_linear,
    integrated_loudness,
    loudness_gain_db,
    normalize_loudness,
    oversampling_factor,
    short_term_loudness,
    true_peak_curve_dbtp,
    true_peak_dbtp,
)

SR = 44100


def _sine(freq_hz: float, seconds: float, peak_dbfs: float, sr: int = SR, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return 10.0 ** (peak_dbfs / 20.0) * np.sin(2 * np.pi * freq_hz * t + phase)


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


def test_true_peak_curve_is_the_per_window_maximum_of_the_per_interval_peaks(songs):
    x = songs[0][:, : 2 * SR + 1234]  # a tail shorter than a window: the last window takes it
    times, curve = true_peak_curve_dbtp(x, SR, hop_s=0.1)
    seg = _peak_segments(x, SR)
    hop = SR // 10
    bounds = list(range(0, 20 * hop, hop)) + [x.shape[1]]
    expected = [seg[a:b].max() for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_allclose(curve, 20 * np.log10(expected), rtol=0, atol=1e-5)  # float32 sums, vectorised differently
    np.testing.assert_allclose(times, [(a + b) / 2 / SR for a, b in zip(bounds, bounds[1:])])
    assert curve.max() == pytest.approx(true_peak_dbtp(x, SR), abs=1e-5)
    assert np.all(np.isneginf(true_peak_curve_dbtp(np.zeros((2, SR)), SR)[1]))


def test_short_term_loudness_equals_a_filtered_copy(songs):
    """The per-hop sums of the meter's kernel give what filtering a copy (scipy's sosfilt) gives."""
    import scipy.signal

    from automaster.dsp.loudness import _k_weighting_sos

    x = songs[1].astype(np.float64)
    sos5 = _k_weighting_sos(SR)
    k = scipy.signal.sosfilt(np.concatenate([sos5[:, :3], np.ones((2, 1)), sos5[:, 3:]], axis=1), x, axis=-1)
    power = (k * k).sum(axis=0)  # stereo: both weights 1
    hop, n = SR // 10, 30  # 3 s windows of 0.1 s hops
    sums = np.array([power[i * hop : i * hop + n * hop].sum() for i in range(x.shape[1] // hop - n + 1)])
    expected = -0.691 + 10 * np.log10(sums / (n * hop))
    expected[-1] = -0.691 + 10 * np.log10(power[-(n * hop) - x.shape[1] % hop :].sum() / (n * hop + x.shape[1] % hop))
    times, lufs = short_term_loudness(songs[1], SR)
    np.testing.assert_allclose(lufs, expected, atol=1e-6)
    assert times[0] == pytest.approx(1.5)


def test_oversampling_follows_annex_2():
    assert [oversampling_factor(sr) for sr in (44100, 48000, 88200, 96000, 176400, 192000)] == [4, 4, 2, 2, 1, 1]
    x = _sine(1000, 0.5, -6.0, sr=192000)
    assert true_peak_dbtp(x, 192000) == pytest.approx(20 * np.log10(np.abs(x).max()), abs=1e-12)


@pytest.mark.parametrize("sample_rate", [8000, 22050, 44100, 48000, 96000, 192000])
def test_k_weighting_coefficients_are_pyloudnorms(sample_rate):
    """The K-weighting biquads computed here (no pyloudnorm import at run time) are pyloudnorm's."""
    from automaster.dsp.loudness import _k_weighting_sos

    rows = []
    for stage in pyloudnorm.Meter(sample_rate)._filters.values():
        b, a = np.asarray(stage.b) * stage.passband_gain, np.asarray(stage.a)
        rows.append(np.concatenate([b / a[0], a[1:] / a[0]]))
    np.testing.assert_allclose(_k_weighting_sos(sample_rate), np.array(rows), rtol=1e-12, atol=1e-15)
