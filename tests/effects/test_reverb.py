"""Reverb: impulse response decay and energy, wet/dry mix, determinism, the suppression inverse."""

import math
from pathlib import Path

import pytest
import soundfile as sf
import torch

from automaster.dsp.mel import melspectrogram
from automaster.effects import reverb, reverb_impulse_response, reverb_inverse, reverb_noise

RATES = [44100, 48000]
CHANNELS = [1, 2]
MUSIC = sorted((Path(__file__).resolve().parents[1] / "data" / "music").glob("*.flac"))
needs_music = pytest.mark.skipif(len(MUSIC) < 2, reason="the real music clips in tests/data/music are missing")


def _music(seconds: float = 3.0) -> tuple[torch.Tensor, int]:
    audio, sample_rate = sf.read(MUSIC[0], dtype="float32", frames=int(seconds * 44100))
    return torch.from_numpy(audio.T.copy()).unsqueeze(0), sample_rate


def _log_mel_error_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    db = lambda x: 10 * torch.log10(melspectrogram(x) + 1e-6)  # noqa: E731
    return (db(ref) - db(est)).abs().mean().item()


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("rt60", [0.3, 1.2])
def test_impulse_response_decays_60_db_at_rt60_and_has_unit_energy(sample_rate, rt60):
    noise = reverb_noise(1, 2, int(2 * rt60 * sample_rate), torch.Generator().manual_seed(0))
    h = reverb_impulse_response(sample_rate, torch.tensor([rt60]), noise)
    torch.testing.assert_close(h.square().sum(dim=-1), torch.ones(1, 2))
    # Schroeder backward integration; fit the slope between -5 and -35 dB.
    edc = 10 * torch.log10(h[0, 0].double().square().flip(0).cumsum(0).flip(0))
    edc = edc - edc[0]
    t = torch.arange(edc.numel(), dtype=torch.float64) / sample_rate
    sel = (edc < -5) & (edc > -35)
    slope = torch.linalg.lstsq(torch.stack([t[sel], torch.ones_like(t[sel])], 1), edc[sel].unsqueeze(1)).solution[0]
    assert -60.0 / slope.item() == pytest.approx(rt60, rel=0.1)


def test_channels_are_decorrelated():
    noise = reverb_noise(1, 2, 44100, torch.Generator().manual_seed(3))
    h = reverb_impulse_response(44100, torch.tensor([1.0]), noise)[0]
    assert abs(torch.corrcoef(h)[0, 1].item()) < 0.1


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_wet_zero_is_identity_both_ways(sample_rate, channels):
    x = torch.randn(2, channels, sample_rate // 2) * 0.1
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(reverb(x, sample_rate, torch.tensor([0.5, 2.0]), 0.0, gen), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(reverb_inverse(x, sample_rate, torch.tensor([0.5, 2.0]), 0.0), x, atol=1e-5, rtol=0)


def test_output_is_dry_plus_wet_convolution():
    x = torch.randn(1, 2, 4000)
    noise = reverb_noise(1, 2, 3000, torch.Generator().manual_seed(1))
    rt60, wet = torch.tensor([0.05]), torch.tensor([0.3])
    h = reverb_impulse_response(44100, rt60, noise)
    expected = torch.stack([torch.nn.functional.conv1d(x[:, c : c + 1], h[:, c : c + 1].flip(-1), padding=2999)[..., :4000]
                            for c in range(2)], 1).squeeze(2)
    y = reverb(x, 44100, rt60, wet, noise=noise)
    torch.testing.assert_close(y, 0.7 * x + 0.3 * expected, atol=1e-4, rtol=1e-4)


def test_same_seed_same_output_and_per_item_generators_match_single_runs():
    x = torch.randn(2, 2, 8000) * 0.1
    rt60, wet = torch.tensor([0.4, 1.5]), torch.tensor([0.2, 0.5])
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 22)]  # noqa: E731
    batched = reverb(x, 44100, rt60, wet, gens())
    torch.testing.assert_close(batched, reverb(x, 44100, rt60, wet, gens()))
    for i, g in enumerate(gens()):
        torch.testing.assert_close(batched[i : i + 1], reverb(x[i : i + 1], 44100, rt60[i : i + 1], wet[i : i + 1], g))
    for i in range(2):
        single = reverb_inverse(batched[i : i + 1], 44100, rt60[i : i + 1], wet[i : i + 1])
        torch.testing.assert_close(reverb_inverse(batched, 44100, rt60, wet)[i : i + 1], single)


@needs_music
@pytest.mark.parametrize("rt60,wet,waveform_too", [(0.4, 0.3, True), (1.5, 0.5, False)])
def test_inverse_reduces_the_error(rt60, wet, waveform_too):
    x, sample_rate = _music()
    y = reverb(x, sample_rate, rt60, wet, torch.Generator().manual_seed(0))
    x_hat = reverb_inverse(y, sample_rate, rt60, wet)
    before, after = _log_mel_error_db(x, y), _log_mel_error_db(x, x_hat)
    assert after < 0.85 * before  # at least 15 % less log-mel error than doing nothing
    if waveform_too:  # with half the mix wet, the random-phase early reverb caps waveform SNR
        snr = lambda est: 10 * math.log10(x.square().sum() / (x - est).square().sum())  # noqa: E731
        assert snr(x_hat) > snr(y)


def test_gradients_reach_rt60_and_wet():
    x = torch.randn(1, 2, 8000, requires_grad=True)
    rt60 = torch.tensor([0.8], requires_grad=True)
    wet = torch.tensor([0.3], requires_grad=True)
    y = reverb(x, 44100, rt60, wet, torch.Generator().manual_seed(0))
    (y.square().mean() + reverb_inverse(y, 44100, rt60, wet).square().mean()).backward()
    for name, v in (("x", x), ("rt60", rt60), ("wet", wet)):
        assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0, name


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"expected \(B, C, T\) audio, got shape \(1, 10\)"):
        reverb(torch.zeros(1, 10), 44100, 1.0, 0.5)
    with pytest.raises(ValueError, match="positive rt60_s"):
        reverb(torch.zeros(1, 1, 10), 44100, 0.0, 0.5)
    with pytest.raises(ValueError, match="one generator per batch item"):
        reverb(torch.zeros(2, 1, 10), 44100, 1.0, 0.5, [torch.Generator()])
