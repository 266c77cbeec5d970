"""Compressor: static curve, ballistics, channel linking, and the feedback-expander inverse."""

import math
from pathlib import Path

import pytest
import soundfile as sf
import torch

from automaster.effects import (
    compressor,
    compressor_curve_db,
    compressor_inverse,
    expander_gain_db,
    one_pole_ballistics,
)

RATES = [44100, 48000]
CHANNELS = [1, 2]
MUSIC = sorted((Path(__file__).resolve().parents[1] / "data" / "music").glob("*.flac"))
needs_music = pytest.mark.skipif(len(MUSIC) < 2, reason="the real music clips in tests/data/music are missing")


def _settings(threshold_db=-30.0, ratio=4.0, knee_db=6.0, attack_ms=5.0, release_ms=100.0, makeup_db=2.0, batch=1):
    values = dict(threshold_db=threshold_db, ratio=ratio, knee_db=knee_db,
                  attack_ms=attack_ms, release_ms=release_ms, makeup_db=makeup_db)
    return {k: torch.full((batch,), float(v)) for k, v in values.items()}


def _tone(amplitude: float, sample_rate: int, channels: int, seconds: float = 1.5, freq: float = 440.0):
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    phases = torch.arange(channels).view(channels, 1) * 0.7  # different waveforms per channel
    return (amplitude * torch.sin(2 * math.pi * freq * t + phases)).unsqueeze(0)


def _rms_db(x: torch.Tensor) -> float:
    return 10 * math.log10(x.square().mean().item())


def _snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    return 10 * math.log10(ref.square().sum().item() / (ref - est).square().sum().item())


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("threshold_db,ratio,knee_db,attack_ms,release_ms", [
    (-30.0, 4.0, 6.0, 2.0, 500.0),   # well above threshold, fast attack, slow release
    (-20.0, 8.0, 12.0, 50.0, 30.0),  # inside the knee
    (-36.0, 2.0, 0.0, 10.0, 100.0),  # hard knee
])
def test_steady_tone_settles_on_static_curve(sample_rate, channels, threshold_db, ratio, knee_db, attack_ms, release_ms):
    x = _tone(0.2, sample_rate, channels)  # about -17 dBFS RMS
    s = _settings(threshold_db, ratio, knee_db, attack_ms, release_ms, makeup_db=3.0)
    y = compressor(x, sample_rate, **s)
    settled = slice(sample_rate // 2, None)
    level_in = torch.tensor(_rms_db(x[..., settled]))
    expected = compressor_curve_db(level_in, s["threshold_db"], s["ratio"], s["knee_db"]).item() + 3.0
    assert _rms_db(y[..., settled]) == pytest.approx(expected, abs=0.3)
    assert expected - 3.0 < level_in.item() - 2.0  # the case does compress


@pytest.mark.parametrize("sample_rate", RATES)
def test_below_threshold_only_makeup_applies(sample_rate):
    x = _tone(0.005, sample_rate, 2)  # about -49 dBFS RMS, under threshold minus half the knee
    y = compressor(x, sample_rate, **_settings(threshold_db=-30.0, knee_db=6.0, makeup_db=2.0))
    torch.testing.assert_close(y, x * 10 ** (2.0 / 20), rtol=1e-5, atol=1e-7)


def test_ratio_applies_above_the_knee():
    s = _settings(threshold_db=-40.0, ratio=4.0, knee_db=0.0, makeup_db=0.0)
    out = [_rms_db(compressor(_tone(a, 44100, 1), 44100, **s)[..., 22050:]) for a in (0.05, 0.2)]
    step_in = 20 * math.log10(0.2 / 0.05)
    assert out[1] - out[0] == pytest.approx(step_in / 4.0, abs=0.1)


def test_stereo_gain_is_linked():
    x = _tone(0.3, 44100, 2)
    x[:, 1] *= 0.1  # one quiet channel must get the same gain as the loud one
    y = compressor(x, 44100, **_settings())
    both = (x[:, 0].abs() > 1e-3) & (x[:, 1].abs() > 1e-3)
    gain_left, gain_right = (y / x)[:, 0][both], (y / x)[:, 1][both]
    assert gain_left.min() < 0.5  # compressing
    torch.testing.assert_close(gain_right, gain_left, rtol=1e-4, atol=0)


@pytest.mark.parametrize("ratio,knee_db", [(1.0, 6.0), (2.0, 0.0), (4.0, 6.0), (8.0, 12.0)])
def test_closed_form_curve_inverse(ratio, knee_db):
    level_in = torch.linspace(-60, 0, 601)
    t, r, k = torch.tensor(-30.0), torch.tensor(ratio), torch.tensor(knee_db)
    level_out = compressor_curve_db(level_in, t, r, k)
    recovered = level_out + expander_gain_db(level_out, t, r, k)
    torch.testing.assert_close(recovered, level_in, atol=2e-4, rtol=0)


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_inverse_undoes_tone_burst(sample_rate, channels):
    x = _tone(0.3, sample_rate, channels, seconds=1.0)
    x[..., : sample_rate // 4] *= 0.05  # quiet, then a loud burst
    s = _settings(attack_ms=2.0, release_ms=300.0, ratio=6.0)
    x_hat = compressor_inverse(compressor(x, sample_rate, **s), sample_rate, **s)
    assert _snr_db(x, x_hat) > 60


@needs_music
def test_inverse_on_real_music_is_near_exact():
    audio, sample_rate = sf.read(MUSIC[1], dtype="float32", frames=3 * 44100)
    x = torch.from_numpy(audio.T.copy()).unsqueeze(0)
    s = _settings(threshold_db=-30.0, ratio=6.0, knee_db=6.0, attack_ms=3.0, release_ms=200.0, makeup_db=4.0)
    y = compressor(x, sample_rate, **s)
    no_inversion = _snr_db(x, y * 10 ** (-4.0 / 20))
    assert no_inversion < 15  # the compressor does change it
    assert _snr_db(x, compressor_inverse(y, sample_rate, **s)) > 40


def test_ballistics_gradcheck():
    torch.manual_seed(0)
    p = torch.rand(2, 30, dtype=torch.float64, requires_grad=True)
    a_att = torch.tensor([0.5, 0.2], dtype=torch.float64, requires_grad=True)
    a_rel = torch.tensor([0.9, 0.95], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(one_pole_ballistics, (p, a_att, a_rel))


def test_gradients_reach_every_parameter():
    envelope = 0.2 + 1.3 * torch.sin(torch.linspace(0, math.pi, 22050))  # rises then falls
    x = (_tone(0.2, 44100, 2, seconds=0.5) * envelope).requires_grad_()
    s = {k: v.clone().requires_grad_() for k, v in _settings(threshold_db=-24.0, knee_db=12.0).items()}
    (compressor(x, 44100, **s).square().mean() + compressor_inverse(x, 44100, **s).square().mean()).backward()
    for name, v in [("x", x), *s.items()]:
        assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0, name


def test_batched_item_equals_single_run():
    x = torch.randn(3, 2, 8000) * torch.tensor([0.05, 0.2, 0.5]).view(3, 1, 1)
    s = _settings(batch=3)
    s["ratio"] = torch.tensor([2.0, 4.0, 8.0])
    for fn in (compressor, compressor_inverse):
        batched = fn(x, 44100, **s)
        for i in range(3):
            torch.testing.assert_close(batched[i : i + 1], fn(x[i : i + 1], 44100, **{k: v[i : i + 1] for k, v in s.items()}))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"expected \(B, C, T\) audio, got shape \(2, 100\)"):
        compressor(torch.zeros(2, 100), 44100, **_settings())
    with pytest.raises(ValueError, match="ratio >= 1"):
        compressor(torch.zeros(1, 1, 100), 44100, **_settings(ratio=0.5))
    with pytest.raises(ValueError, match=r"threshold_db of shape \(1,\)"):
        compressor(torch.zeros(1, 1, 100), 44100, **{**_settings(), "threshold_db": torch.zeros(2)})


@pytest.mark.parametrize("channels", CHANNELS)
def test_fast_cpu_compressor_equals_the_differentiable_one(channels):
    # Without autograd on the CPU the detector runs as one fused numba pass and the gain is
    # interpolated as it is applied; with it, two autograd recursions and torch interpolation.
    x = torch.randn(2, channels, 44100 + 37, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.3, 0.05]).view(2, 1, 1)
    settings = {k: torch.cat([v, v * 0.5]) for k, v in _settings(knee_db=6.0, attack_ms=3.0, release_ms=80.0).items()}
    fast = compressor(x, 44100, **settings)
    slow = compressor(x, 44100, **{k: v.clone().requires_grad_() for k, v in settings.items()}).detach()
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)
