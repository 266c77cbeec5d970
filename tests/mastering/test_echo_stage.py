"""The echo stage on real music: a single echo is undone as one, a feedback delay (a delay pedal,
pedalboard's Delay) as a feedback delay, from the cepstrum's first two harmonics, and a multi-tap
echo (ffmpeg's aecho with several delays) one tap after the other."""

from __future__ import annotations

import numpy as np
import pytest

from automaster.effects.echo import echo_inverse_time
from automaster.mastering import MIN_ECHO_GAIN
from automaster.mastering.policy import MIN_ECHO_FEEDBACK, echo_feedback, remove_echo
from tests.audio_fixtures import D01, D02
from tests.dsp.test_cepstrum import _feedback_delay, _music


def _si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    e, r = estimate.ravel().astype(np.float64), reference.ravel().astype(np.float64)
    target = (e @ r) / (r @ r) * r
    return float(10 * np.log10((target @ target) / ((e - target) @ (e - target))))


def test_the_feedback_from_two_harmonics():
    assert echo_feedback(0.4, -0.4**2 / 2) == pytest.approx(0.0)  # a single echo
    assert echo_feedback(0.4, 0.4**2 / 2) == pytest.approx(0.4)  # a pure feedback loop
    a, f = 0.15, 0.35
    assert echo_feedback(a + f, (f**2 - a**2) / 2) == pytest.approx(f)
    assert echo_feedback(0.0, 0.1) == 0.0


@pytest.mark.parametrize(("path", "delay_s", "gain", "feedback"), [
    (D01, 0.25, 0.45, 0.35), (D02, 0.0871, 0.5, 0.3), (D01, 0.3, 0.3, 0.5),
])
def test_a_feedback_delay_is_undone_as_one(path, delay_s, gain, feedback):
    clean, sr = _music(path)
    damaged = _feedback_delay(clean, sr, delay_s, gain, feedback)
    restored, note = remove_echo(damaged, sr, MIN_ECHO_GAIN)
    assert note["echo_removed"] and note["echo_delay_s"] == pytest.approx(delay_s, abs=0.5e-3)
    assert note["echo_feedback"] == pytest.approx(feedback, abs=0.08)
    single = echo_inverse_time(damaged, sr, note["echo_delay_s"], min(note["echo_gain"], 0.5))  # as one echo
    assert _si_sdr(restored, clean) > max(20.0, _si_sdr(single, clean) + 3.0)
    assert _si_sdr(single, clean) > _si_sdr(damaged, clean) + 5.0


@pytest.mark.parametrize(("path", "delay_s", "gain"), [(D01, 0.1234, 0.3), (D02, 0.3, 0.45)])
def test_a_single_echo_is_undone_without_feedback(path, delay_s, gain):
    clean, sr = _music(path)
    restored, note = remove_echo(_feedback_delay(clean, sr, delay_s, gain, 0.0), sr, MIN_ECHO_GAIN)
    assert note["echo_removed"] and note["echo_feedback"] == 0.0 < MIN_ECHO_FEEDBACK
    assert _si_sdr(restored, clean) > 25.0


@pytest.mark.parametrize("path", [D01, D02])
def test_clean_music_is_left_alone(path):
    clean, sr = _music(path)
    restored, note = remove_echo(clean, sr, MIN_ECHO_GAIN)
    assert not note["echo_removed"] and note["echo_feedback"] == 0.0 and note["echo_taps"] == []
    assert restored is clean


def _taps(audio: np.ndarray, sr: int, taps: list[tuple[float, float]]) -> np.ndarray:
    """``x + sum g x(t - d)``: a multi-tap echo (whole-sample delays)."""
    out = audio.copy()
    for delay_s, gain in taps:
        d = round(delay_s * sr)
        out[:, d:] += gain * audio[:, :-d]
    return out


@pytest.mark.parametrize(("path", "taps"), [
    (D01, [(0.13, 0.4), (0.31, 0.3)]),
    (D02, [(0.08, 0.35), (0.21, 0.3), (0.37, 0.25)]),
    (D01, [(0.25, 0.5), (0.4, 0.45)]),
])
def test_a_multi_tap_echo_is_undone_tap_by_tap(path, taps):
    clean, sr = _music(path)
    damaged = _taps(clean, sr, taps)
    restored, note = remove_echo(damaged, sr, MIN_ECHO_GAIN)
    single, first = remove_echo(damaged, sr, MIN_ECHO_GAIN, max_taps=1)  # the strongest tap alone
    found = sorted(t["delay_s"] for t in note["echo_taps"])
    assert found == pytest.approx([d for d, _ in taps], abs=0.5e-3)
    assert note["echo_delay_s"] == first["echo_delay_s"] == note["echo_taps"][0]["delay_s"]  # the report's first tap
    assert all(t["gain"] == pytest.approx(g, abs=0.1) for t, (_, g) in zip(sorted(note["echo_taps"], key=lambda t: t["delay_s"]), taps))
    assert _si_sdr(restored, clean) > max(15.0, _si_sdr(single, clean) + 8.0)
