"""Echo: the tap sits at its delay with its gain, fractional delays are exact, the IIR inverse."""

import math

import numpy as np
import pytest
import torch

from automaster.effects import echo, echo_inverse
from automaster.effects.echo import MultiEchoInverseStream, echo_inverse_time, multi_echo_inverse_time

RATES = [44100, 48000]
CHANNELS = [1, 2]


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("delay_samples,gain", [(441, 0.5), (2000, 0.25)])
def test_impulse_response_has_its_tap(sample_rate, channels, delay_samples, gain):
    x = torch.zeros(1, channels, 4000)
    x[..., 100] = 1.0
    y = echo(x, sample_rate, delay_samples / sample_rate, gain)
    expected = x.clone()
    expected[..., 100 + delay_samples] = gain
    torch.testing.assert_close(y, expected, atol=5e-5, rtol=0)


def test_fractional_delay_is_band_limited_shift():
    sample_rate, delay = 44100, 0.0123456  # 544.44 samples
    t = torch.arange(8192) / sample_rate
    freq = 441.0
    x = torch.sin(2 * math.pi * freq * t).view(1, 1, -1)
    y = echo(x, sample_rate, delay, 0.5)
    expected = x + 0.5 * torch.sin(2 * math.pi * freq * (t - delay)) * (t >= delay)
    mid = slice(1500, 7000)  # away from the onset of the echo and the clip's end
    torch.testing.assert_close(y[..., mid], expected[..., mid], atol=5e-3, rtol=0)


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("delay_s,gain", [(0.05, 0.5), (0.2512, 0.3), (0.5, 0.5)])
def test_inverse_removes_echo_even_from_short_clips(sample_rate, channels, delay_s, gain):
    x = torch.randn(1, channels, int(0.6 * sample_rate))  # barely longer than the delay
    x_hat = echo_inverse(echo(x, sample_rate, delay_s, gain), sample_rate, delay_s, gain)
    snr = 10 * math.log10(x.square().sum() / (x - x_hat).square().sum())
    assert snr > 60  # band-limited (sinc) fractional delays leak a little across the clip end


def test_zero_gain_is_identity():
    x = torch.randn(2, 2, 3000)
    torch.testing.assert_close(echo(x, 44100, 0.1, 0.0), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(echo_inverse(x, 44100, 0.1, 0.0), x, atol=1e-5, rtol=0)


def test_batched_item_equals_single_run():
    x = torch.randn(3, 2, 5000)
    delay, gain = torch.tensor([0.01, 0.05, 0.1]), torch.tensor([0.1, 0.3, 0.5])
    for fn in (echo, echo_inverse):
        batched = fn(x, 44100, delay, gain)
        for i in range(3):
            single = fn(x[i : i + 1], 44100, delay[i : i + 1], gain[i : i + 1])
            torch.testing.assert_close(batched[i : i + 1], single, atol=1e-4, rtol=1e-4)  # FFT sizes differ


def test_gradients_reach_delay_and_gain():
    x = torch.randn(1, 2, 5000, requires_grad=True)
    delay = torch.tensor([0.0314], requires_grad=True)
    gain = torch.tensor([0.4], requires_grad=True)
    (echo(x, 44100, delay, gain).square().mean() + echo_inverse(x, 44100, delay, gain).square().mean()).backward()
    for name, v in (("x", x), ("delay", delay), ("gain", gain)):
        assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0, name


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"expected \(B, C, T\) audio, got shape \(5,\)"):
        echo(torch.zeros(5), 44100, 0.1, 0.5)
    with pytest.raises(ValueError, match=r"\|gain\| <= 0.99"):
        echo_inverse(torch.zeros(1, 1, 100), 44100, 0.1, 1.0)
    with pytest.raises(ValueError, match="delay_s >= 0"):
        echo(torch.zeros(1, 1, 100), 44100, -0.1, 0.5)


@pytest.mark.parametrize("delay_s,gain", [(0.05, 0.5), (0.1234567, 0.25), (0.5, 0.45)])
def test_time_domain_inverse_agrees_with_the_fft_division(delay_s, gain):
    # The IIR with a windowed-sinc fractional delay (used by the chain's CPU inverse) against the
    # exact band-limited division, on noise flat up to 20 kHz (harder than music).
    noise = torch.randn(2, 40000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    spec = torch.fft.rfft(noise)
    spec[:, torch.fft.rfftfreq(40000, 1 / 44100) > 20000] = 0
    x = (torch.fft.irfft(spec, 40000) * 0.1).float()[None]
    y = echo(x, 44100, delay_s, gain)
    ref = 2.0 * echo_inverse(y, 44100, delay_s, gain)[0].numpy()
    ours = echo_inverse_time(y[0].numpy(), 44100, delay_s, gain, scale=2.0)
    inner = slice(5000, 35000)  # away from the FFT division's wrap-around at the ends
    snr = 10 * math.log10((ref[:, inner] ** 2).sum() / ((ours - ref)[:, inner] ** 2).sum())
    assert snr > 65
    assert ours.dtype == np.float32 and ours.shape == (2, 40000)


def test_time_domain_inverse_needs_a_delay():
    with pytest.raises(ValueError, match="delay"):
        echo_inverse_time(torch.zeros(1, 1000).numpy(), 44100, 10 / 44100, 0.5)


@pytest.mark.parametrize(("delay_s", "zero", "feedback"), [(5000 / 44100, 0.2, 0.4), (0.0123456, -0.3, 0.6)])
def test_time_domain_inverse_undoes_a_feedback_delay(delay_s, zero, feedback):
    # (1 + zero z^-d) / (1 - feedback z^-d), built as a single echo of gain ``zero`` after the
    # feedback loop's all-pole part; a fractional delay too.
    noise = torch.randn(2, 40000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    spec = torch.fft.rfft(noise)
    spec[:, torch.fft.rfftfreq(40000, 1 / 44100) > 20000] = 0
    x = (torch.fft.irfft(spec, 40000) * 0.1).float()
    pole = echo_inverse_time(x.numpy().astype(np.float64), 44100, delay_s, -feedback)  # x / (1 - f z^-d)
    y = echo(torch.from_numpy(pole)[None], 44100, delay_s, zero)[0].numpy().astype(np.float32)
    ours = echo_inverse_time(y, 44100, delay_s, zero, feedback=feedback)
    inner = slice(2000, 30000)  # away from the forward echo's wrap-around at the end
    snr = 10 * math.log10((x.numpy()[:, inner] ** 2).sum() / ((ours - x.numpy())[:, inner] ** 2).sum())
    single = echo_inverse_time(y, 44100, delay_s, zero + feedback)  # the single-echo inverse leaves echoes
    snr_single = 10 * math.log10((x.numpy()[:, inner] ** 2).sum() / ((single - x.numpy())[:, inner] ** 2).sum())
    assert snr > 60 and snr_single < 20


def test_multi_tap_inverse_undoes_a_multi_tap_echo_exactly():
    # 1 + sum g_i z^-d_i (fractional delays, built from single echoes by the FFT) against the joint
    # IIR, whole and a block at a time; one tap is echo_inverse_time's IIR.
    noise = torch.randn(2, 40000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    spec = torch.fft.rfft(noise)
    spec[:, torch.fft.rfftfreq(40000, 1 / 44100) > 20000] = 0
    x = (torch.fft.irfft(spec, 40000) * 0.1).float()[None]
    delays, gains = [0.0123456, 0.05, 0.1711], [0.3, -0.25, 0.35]
    y = (x + sum(echo(x, 44100, d, g) - x for d, g in zip(delays, gains)))[0].numpy()
    ours = multi_echo_inverse_time(y, 44100, delays, gains)
    inner = slice(2000, 30000)  # away from the forward echoes' wrap-around at the end
    snr = 10 * math.log10((x[0].numpy()[:, inner] ** 2).sum() / ((ours - x[0].numpy())[:, inner] ** 2).sum())
    assert snr > 60
    stream = MultiEchoInverseStream(2, 44100, delays, gains)
    assert np.abs(np.concatenate([stream(y[:, i : i + 7000]) for i in range(0, 40000, 7000)], axis=1) - ours).max() < 1e-6
    one = multi_echo_inverse_time(y, 44100, [0.05], [0.4])
    assert np.abs(one - echo_inverse_time(y, 44100, 0.05, 0.4)).max() < 1e-5
    with pytest.raises(ValueError, match="sum"):
        MultiEchoInverseStream(2, 44100, delays, [0.5, 0.3, 0.2])  # an inverse that may not be stable
    with pytest.raises(ValueError, match="delay"):
        MultiEchoInverseStream(2, 44100, [0.05, 10 / 44100], [0.2, 0.2])
