"""Blind echo estimation (automaster.dsp.cepstrum) on real music with a known echo added."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from automaster.dsp.cepstrum import estimate_echo
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
