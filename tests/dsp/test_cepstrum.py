"""Blind echo estimation (automaster.dsp.cepstrum) on real music with a known echo added."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import scipy.signal

from automaster.dsp.cepstrum import detect_echo, estimate_echo
from automaster.effects.echo import echo
from automaster.mastering import MIN_ECHO_GAIN
from tests.audio_fixtures import D01, D02


def _music(path, seconds: float = 10.0) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(path, frames=int(seconds * 44100), dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T), sr


def _with_echo(audio: np.ndarray, sr: int, delay_s: float, gain: float) -> np.ndarray:
    x = torch.from_numpy(audio).double()[None]
    return echo(x, sr, torch.tensor([delay_s]).double(), torch.tensor([gain]).double())[0].float().numpy()


@pytest.mark.parametrize(("delay_s", "gain"), [(0.1, 0.3), (0.1234, 0.3), (0.3, 0.12), (0.45678, 0.45)])
@pytest.mark.parametrize("path", [D01, D02])
def test_a_known_echo_on_real_music_is_found(path, delay_s, gain):
    audio, sr = _music(path)
    est = estimate_echo(_with_echo(audio, sr, delay_s, gain), sr)
    assert est.delay_s == pytest.approx(delay_s, abs=0.5e-3)  # fractional delays too
    assert est.gain == pytest.approx(gain, rel=0.12)
    assert est.z > 20  # stands far out of the rest of the cepstrum


@pytest.mark.parametrize("path", [D01, D02])
def test_clean_music_measures_below_the_removal_threshold(path):
    audio, sr = _music(path)
    est = estimate_echo(audio, sr)
    assert est.gain < MIN_ECHO_GAIN
    # Level-free: the same music 30 dB quieter gives the same estimate.
    quiet = estimate_echo(audio * np.float32(10 ** (-30 / 20)), sr)
    assert quiet.gain == pytest.approx(est.gain, abs=1e-3)


def test_long_inputs_are_averaged_over_segments_and_keep_the_estimate():
    a, sr = _music(D01)
    b, _ = _music(D02)
    long = np.concatenate([a, b, a[:, ::-1], b[:, ::-1], a[::-1]], axis=1)  # 50 s (two 25 s segments), no loops
    est = estimate_echo(_with_echo(long, sr, 0.2, 0.25), sr)
    assert est.delay_s == pytest.approx(0.2, abs=0.5e-3)
    assert est.gain == pytest.approx(0.25, rel=0.12)


def test_other_sample_rates_give_the_delay_in_seconds():
    audio, _ = _music(D01)
    import soxr

    at48 = np.ascontiguousarray(soxr.resample(audio.T, 44100, 48000).T)
    est = estimate_echo(_with_echo(at48, 48000, 0.15, 0.3), 48000)
    assert est.delay_s == pytest.approx(0.15, abs=0.5e-3)


def test_too_short_or_empty_range_is_an_error():
    with pytest.raises(ValueError, match="too short"):
        estimate_echo(np.zeros(44100, np.float32), 44100)  # 1 s < 4 x 0.52 s
    with pytest.raises(ValueError, match="empty delay range"):
        estimate_echo(np.zeros(10 * 44100, np.float32), 44100, min_delay_s=0.3, max_delay_s=0.2)


def test_silence_has_no_echo():
    est = estimate_echo(np.zeros((2, 5 * 44100), np.float32), 44100)
    assert est.gain == 0.0


# ----------------------------------------------------------------------------- confirmation


def _feedback_delay(audio: np.ndarray, sr: int, delay_s: float, gain: float, feedback: float) -> np.ndarray:
    """``x + gain * sum_k feedback^k x(t - (k + 1) d)``: a delay pedal with feedback."""
    d = round(delay_s * sr)
    b = np.zeros(d + 1)
    b[0], b[d] = 1.0, gain - feedback  # (1 + (g - fb) z^-d) / (1 - fb z^-d)
    a = np.zeros(d + 1)
    a[0], a[d] = 1.0, -feedback
    return scipy.signal.lfilter(b, a, audio, axis=-1).astype(np.float32)


def _loop(audio: np.ndarray, sr: int, period_s: float, seconds: float) -> np.ndarray:
    """Real music looped at ``period_s`` (a bar of a loop-based track), with a different take
    of it mixed in at half level (the loop never repeats exactly what else plays)."""
    n = round(period_s * sr)
    bar = audio[:, :n]
    loop = np.tile(bar, (1, int(np.ceil(seconds / period_s))))[:, : int(seconds * sr)]
    return (loop + 0.5 * audio[:, n : n + loop.shape[1]]).astype(np.float32)


@pytest.mark.parametrize(("path", "delay_s", "gain", "feedback"), [
    (D01, 0.1234, 0.3, 0.0), (D02, 0.3, 0.2, 0.0), (D01, 0.25, 0.25, 0.3),  # the last: a delay pedal
])
def test_a_real_echo_is_confirmed(path, delay_s, gain, feedback):
    audio, sr = _music(path)
    found = detect_echo(_feedback_delay(audio, sr, delay_s, gain, feedback), sr, min_gain=MIN_ECHO_GAIN)
    assert found.confirmed, found.reasons
    assert found.delay_s == pytest.approx(delay_s, abs=0.5e-3)
    assert found.reasons == ()
    assert len(found.section_gains) == 3  # 10 s: long enough for the consistency check


@pytest.mark.parametrize("path", [D01, D02])
def test_clean_music_is_not_confirmed(path):
    audio, sr = _music(path)
    found = detect_echo(audio, sr, min_gain=MIN_ECHO_GAIN)
    assert not found.confirmed
    assert any(r.startswith("gain ") for r in found.reasons)


def test_a_repetition_in_one_section_only_is_not_an_echo():
    audio, sr = _music(D01)
    repeated = audio.copy()
    third = audio.shape[1] // 3
    repeated[:, :third] = _with_echo(audio[:, :third], sr, 0.444, 0.6)  # a strong repeat, first third only
    found = detect_echo(repeated, sr, min_gain=MIN_ECHO_GAIN)
    assert estimate_echo(repeated, sr).gain >= MIN_ECHO_GAIN  # the old rule would remove it
    assert found.delay_s == pytest.approx(0.444, abs=1e-3)
    assert not found.confirmed
    assert any("sections disagree" in r for r in found.reasons)


def test_a_loop_is_not_an_echo_and_the_real_echo_behind_it_is_found():
    # The failure this check exists for: a loop-based track whose repetition period outweighs
    # a real, weaker echo at another delay.
    audio, sr = _music(D02)
    looped = _loop(audio, sr, 0.444, 9.0)
    alone = detect_echo(looped, sr, min_gain=MIN_ECHO_GAIN)
    assert not alone.confirmed
    assert any("the music repeats" in r for r in alone.reasons)
    with_echo = _feedback_delay(looped, sr, 0.308, 0.3, 0.0)
    assert estimate_echo(with_echo, sr).delay_s == pytest.approx(0.444, abs=1e-3)  # strongest peak: the loop
    found = detect_echo(with_echo, sr, min_gain=MIN_ECHO_GAIN)
    assert found.confirmed, found.reasons
    assert found.delay_s == pytest.approx(0.308, abs=0.5e-3)
