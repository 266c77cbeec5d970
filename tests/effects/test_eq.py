"""EQ: the bell applies its gain at its centre, neutral is the identity, the inverse is exact."""

import math

import pytest
import torch

from automaster.dsp.stft import istft, stft
from automaster.effects import eq, eq_inverse, eq_response, eq_stft

RATES = [44100, 48000]
CHANNELS = [1, 2]
NEUTRAL = dict(low_gain_db=0.0, low_fc_hz=200.0, low_q=2.0, high_gain_db=0.0, high_fc_hz=5000.0, high_q=2.0)


def _params(batch: int = 1, **over) -> dict[str, torch.Tensor]:
    return {k: torch.full((batch,), float(v)) for k, v in {**NEUTRAL, **over}.items()}


def _sine(freq: float, sample_rate: int, channels: int, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * torch.sin(2 * math.pi * freq * t)).expand(1, channels, -1).contiguous()


def _rms_db(x: torch.Tensor) -> float:
    return 10 * math.log10(x.square().mean().item())


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_neutral_is_identity(sample_rate, channels):
    x = torch.randn(2, channels, sample_rate // 2) * 0.1
    torch.testing.assert_close(eq(x, sample_rate, **_params(2)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(eq_inverse(x, sample_rate, **_params(2)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("band,fc", [("low", 300.0), ("high", 4000.0)])
@pytest.mark.parametrize("gain_db", [-6.0, 4.5])
def test_bell_applies_its_gain_at_centre(sample_rate, channels, band, fc, gain_db):
    x = _sine(fc, sample_rate, channels)
    y = eq(x, sample_rate, **_params(**{f"{band}_gain_db": gain_db, f"{band}_fc_hz": fc, f"{band}_q": 2.0}))
    mid = slice(4096, -4096)  # away from the edge frames
    assert _rms_db(y[..., mid]) - _rms_db(x[..., mid]) == pytest.approx(gain_db, abs=0.05)


def test_response_formula_at_centre_and_far_away():
    sample_rate, n_bins = 44100, 1025
    fc = 20 * sample_rate / 2048  # exactly on bin 20
    r = eq_response(sample_rate, n_bins, 3, torch.tensor([6.0]), fc, 4.0, 0.0, 5000.0, 2.0)
    assert r.shape == (1, n_bins, 3)
    assert 20 * math.log10(r[0, 20, 0].item()) == pytest.approx(6.0, abs=1e-4)
    assert r[0, 900, 0].item() == pytest.approx(1.0, abs=1e-6)  # 19 kHz: far outside both bells


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_inverse_undoes_time_varying_eq(sample_rate, channels):
    x = torch.randn(1, channels, sample_rate) * 0.1
    frames = 1 + sample_rate // 512
    ramp = torch.linspace(0, 1, frames).unsqueeze(0)
    params = dict(low_gain_db=-6 + 12 * ramp, low_fc_hz=100 + 500 * ramp, low_q=torch.tensor([1.5]),
                  high_gain_db=6 - 12 * ramp, high_fc_hz=torch.tensor([3000.0]), high_q=1 + 3 * ramp)
    x_hat = eq_inverse(eq(x, sample_rate, **params), sample_rate, **params)
    snr = 10 * math.log10(x.square().sum() / (x - x_hat).square().sum())
    assert snr > 60


def test_stft_entry_point_matches_waveform_path():
    x = torch.randn(2, 2, 22050) * 0.1
    params = _params(2, low_gain_db=3.0, high_gain_db=-4.0)
    via_spec = istft(eq_stft(stft(x), 44100, **params), x.shape[-1])
    torch.testing.assert_close(via_spec, eq(x, 44100, **params))


def test_any_trajectory_length_is_resampled_by_time():
    x = torch.randn(1, 1, 44100) * 0.1
    constant = eq(x, 44100, **_params(low_gain_db=5.0))
    as_trajectory = eq(x, 44100, **{**_params(), "low_gain_db": torch.full((1, 7), 5.0)})
    torch.testing.assert_close(as_trajectory, constant)


def test_batched_item_equals_single_run():
    x = torch.randn(3, 2, 11025) * 0.1
    params = {k: torch.full((3, 5), v) for k, v in NEUTRAL.items()}
    params["low_gain_db"] = torch.linspace(-6, 6, 15).view(3, 5)
    batched = eq(x, 44100, **params)
    for i in range(3):
        single = eq(x[i : i + 1], 44100, **{k: v[i : i + 1] for k, v in params.items()})
        torch.testing.assert_close(batched[i : i + 1], single)


def test_gradients_reach_every_parameter():
    x = torch.randn(1, 2, 11025, requires_grad=True)
    params = {k: v.clone().requires_grad_() for k, v in _params(low_gain_db=3.0, high_gain_db=-3.0).items()}
    (eq(x, 44100, **params).square().mean() + eq_inverse(x, 44100, **params).square().mean()).backward()
    for name, v in [("x", x), *params.items()]:
        assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0, name


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"expected \(B, C, T\) audio, got shape \(3,\)"):
        eq(torch.zeros(3), 44100, **_params())
    with pytest.raises(ValueError, match="low_gain_db"):
        eq(torch.zeros(2, 1, 100), 44100, **_params(3))
    with pytest.raises(ValueError, match="complex"):
        eq_stft(torch.zeros(1, 1, 1025, 4), 44100, **_params())
