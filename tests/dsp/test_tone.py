"""Tone profiles, the tone-matching EQ and tone error, on real music and analytic signals."""

from __future__ import annotations

import json
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
    """These two differ by up to 20 dB in places: the +-6 dB EQ closes about half the tone error."""
    ref = tone.tone_profile(fairy, SR)
    y, info = tone.match_tone(brahms, SR, ref)
    assert y.shape == brahms.shape and y.dtype == np.float32
    assert info["tone_error_after_db"] < 0.6 * info["tone_error_before_db"]
    gap_before = abs(info["width_before_db"] - ref.width_db)
    gap_after = abs(info["width_after_db"] - ref.width_db)
    assert gap_after < 0.15 * gap_before


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


def _tilted(audio: np.ndarray, db_per_octave: float, side_db: float) -> np.ndarray:
    """``audio`` with a spectral tilt about 1 kHz on the mid and the side raised by ``side_db``."""
    spec = np.fft.rfft(audio, axis=-1)
    f = np.maximum(np.fft.rfftfreq(audio.shape[-1], 1 / SR), 10.0)
    spec *= 10 ** (db_per_octave * np.log2(f / 1000.0) / 20)
    x = np.fft.irfft(spec, n=audio.shape[-1], axis=-1)
    mid, side = (x[0] + x[1]) / 2, (x[0] - x[1]) / 2 * 10 ** (side_db / 20)
    return np.stack([mid + side, mid - side]).astype(np.float32)


@pytest.mark.parametrize("bound", [3.0, 6.0])
@pytest.mark.parametrize("tilt, side", [(12.0, 20.0), (-12.0, -20.0)])
def test_eq_never_leaves_its_bound(brahms, bound, tilt, side):
    """A reference 12 dB/octave away (over 100 dB from end to end) and 20 dB wider or narrower:
    both curves, the side's broadband gain included, stay within +-bound, and reach it."""
    ref = tone.tone_profile(_tilted(brahms, tilt, side), SR)
    _, info = tone.match_tone(brahms, SR, ref, max_eq_db=bound)
    mid, side_db = np.array(info["eq_mid_db"]), np.array(info["eq_side_db"])
    assert np.abs(mid).max() <= bound + 1e-6 and np.abs(side_db).max() <= bound + 1e-6
    assert abs(info["side_gain_db"]) <= bound + 1e-6
    assert info["at_bound"]["mid"] and info["max_eq_db"] == bound


def test_eq_is_smooth(brahms, fairy):
    """No notches: across the 1/12-octave grid, inside the EQ's span, the curves bend by at most
    the Gaussian smoothing's bound (max_eq_db * 0.97 / sigma**2, sigma in grid steps), 0.65 dB at
    +-6 dB; the unsmoothed difference of these two bends by over 5 dB."""
    span = (tone.GRID_HZ >= tone.EQ_LOW_HZ) & (tone.GRID_HZ <= tone.EQ_HIGH_HZ)
    for a, b in ((brahms, fairy), (fairy, brahms), (brahms, _tilted(brahms, 12.0, 20.0))):
        _, info = tone.match_tone(a, SR, tone.tone_profile(b, SR))
        for key in ("eq_mid_db", "eq_side_db"):
            bend = np.abs(np.diff(np.array(info[key])[span], 2))
            assert bend.max() <= 6.0 * 0.97 / (12 * tone.EQ_SMOOTHING_OCTAVES) ** 2 + 0.02, key
    raw, _ = tone.matching_curves(tone.tone_profile(brahms, SR), tone.tone_profile(fairy, SR))
    assert np.abs(np.diff(raw[span], 2)).max() > 5.0


def _stereo_noise(width_db: float, seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    """Pink-ish noise with an independent side ``width_db`` below the mid."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    f = np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0)
    mid, side = (np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(f), n=n) for _ in range(2))
    side *= np.sqrt(np.dot(mid, mid) / np.dot(side, side)) * 10 ** (width_db / 20)
    x = np.stack([mid + side, mid - side])
    return (0.1 * x / np.abs(x).max()).astype(np.float32)


@pytest.mark.parametrize("ref_width", [-1.0, -11.0, 4.0, -20.0])
@pytest.mark.parametrize("bass_db", [6.0, -6.0])
def test_width_moves_toward_the_reference_never_past(ref_width, bass_db):
    """A source at -6 dB against wider and narrower references whose spectrum differs by a bass
    shelf (the mid EQ changes the mid's energy, and so the width): the width lands between the
    source's and the reference's; within 15% of the gap when the gap is 5 dB (+-6 dB reaches it),
    at least 2 dB toward it when it is 10 or 14 dB (the bound may stop it short)."""
    source = _stereo_noise(-6.0)
    reference = _stereo_noise(ref_width, seed=1)
    spec = np.fft.rfft(reference, axis=-1)
    spec[:, np.fft.rfftfreq(reference.shape[-1], 1 / SR) < 200] *= 10 ** (bass_db / 20)
    reference = np.fft.irfft(spec, n=reference.shape[-1], axis=-1).astype(np.float32)
    ref = tone.tone_profile(reference, SR)
    y, info = tone.match_tone(source, SR, ref)
    before, after = tone.stereo_width_db(source), tone.stereo_width_db(y)
    assert info["width_after_db"] == pytest.approx(after, abs=1e-3)
    assert min(before, ref.width_db) <= after <= max(before, ref.width_db)  # toward, never past
    if abs(ref_width + 6.0) <= 5.0:
        assert abs(after - ref.width_db) <= 0.15 * abs(before - ref.width_db)
    else:
        assert abs(after - ref.width_db) <= abs(before - ref.width_db) - 2.0


def test_width_stops_short_at_the_bound():
    """A reference 30 dB wider than +-2 dB can reach: the width moves as far as the bound allows,
    toward the reference, and the side curve sits at the bound."""
    source = _stereo_noise(-25.0)
    y, info = tone.match_tone(source, SR, tone.tone_profile(_stereo_noise(5.0, seed=1), SR), max_eq_db=2.0)
    before, after = tone.stereo_width_db(source), tone.stereo_width_db(y)
    assert before + 1.8 < after < before + 4.0 + 1e-3  # side up 2 dB; the mid's curve is near 0 dB
    assert np.abs(np.array(info["eq_side_db"])).max() <= 2.0 + 1e-6 and info["at_bound"]["side"]


def test_info_gives_the_applied_curves(brahms, fairy):
    """The report draws and stores these: the grid and both curves, JSON-ready, one value a point."""
    _, info = tone.match_tone(brahms, SR, tone.tone_profile(fairy, SR))
    assert info["eq_hz"] == pytest.approx(tone.GRID_HZ.tolist(), abs=0.05)
    for key, span in (("eq_mid_db", "mid_eq_db"), ("eq_side_db", "side_eq_db")):
        assert len(info[key]) == len(info["eq_hz"]) and all(isinstance(v, float) for v in info[key])
        assert [min(info[key]), max(info[key])] == pytest.approx(info[span], abs=0.01)
    assert json.loads(json.dumps(info)) == info


def test_bad_bound_is_named(brahms, fairy):
    with pytest.raises(ValueError, match="max_eq_db"):
        tone.match_tone(brahms, SR, tone.tone_profile(fairy, SR), max_eq_db=float("nan"))


def test_average_spectrum_is_scipys_welch(brahms):
    import scipy.signal

    mid = tone.mid_side(brahms)[0]
    for x in (mid, mid[:3000], mid[: 5 * 4096 + 777]):  # a song, less than a frame, a partial last frame
        n = 4096
        padded = np.pad(x, (0, max(0, n - x.size))).astype(np.float64)
        freqs, power = scipy.signal.welch(padded, fs=SR, window="hann", nperseg=n, noverlap=n // 2, detrend=False,
                                          scaling="density")
        ours_f, ours = tone.average_spectrum(x, SR)
        np.testing.assert_array_equal(ours_f, freqs)
        np.testing.assert_allclose(ours, power, rtol=1e-8, atol=0)


def test_mid_spectrum_is_the_profiles_mid(brahms):
    np.testing.assert_array_equal(tone.mid_spectrum_db(brahms, SR), tone.tone_profile(brahms, SR).mid_db)
