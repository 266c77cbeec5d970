"""The chain: neutral identity, work sharing, batching, repair quality, gradients, headroom gain."""

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from automaster.dsp.mel import melspectrogram
from automaster.dsp.stft import stft, stft_rows
from automaster.effects import apply_chain, gain, gain_inverse, invert_chain, neutral_params
from automaster.effects.params import PARAMS

RATES = [44100, 48000]
CHANNELS = [1, 2]
MUSIC = sorted((Path(__file__).resolve().parents[1] / "data" / "music").glob("*.flac"))
needs_music = pytest.mark.skipif(len(MUSIC) < 2, reason="the real music clips in tests/data/music are missing")


def _music(index: int, seconds: float) -> torch.Tensor:
    audio, _ = sf.read(MUSIC[index], dtype="float32", frames=int(seconds * 44100))
    return torch.from_numpy(audio.T.copy()).unsqueeze(0)


def _params(u: float | list[float], n_frames: int) -> dict[str, torch.Tensor]:
    """Every parameter at normalised position ``u`` (one per batch item) of its range."""
    u = torch.tensor([u] if isinstance(u, float) else u)
    out = {}
    for p in PARAMS:
        v = p.denormalize(u)
        out[p.name] = v.unsqueeze(-1).repeat(1, n_frames) if p.per_frame else v
    return out


def _snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    return 10 * math.log10(ref.square().sum().item() / (ref - est).square().sum().item())


def _log_mel_error_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    db = lambda x: 10 * torch.log10(melspectrogram(x) + 1e-6)  # noqa: E731
    return (db(ref) - db(est)).abs().mean().item()


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_neutral_params_are_identity_both_ways(sample_rate, channels):
    x = torch.randn(2, channels, sample_rate // 2) * 0.1
    params = neutral_params(2, 1 + (sample_rate // 2 * 44100 // sample_rate) // 512)  # 44.1 kHz frames
    torch.testing.assert_close(apply_chain(x, sample_rate, params), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(invert_chain(x, sample_rate, params), x, atol=1e-5, rtol=0)


def test_given_stft_gives_the_same_result():
    x = torch.randn(1, 2, 22050) * 0.1
    params = _params(0.6, 44)
    gens = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    torch.testing.assert_close(apply_chain(x, 44100, params, gens(), stft_x=stft(x)), apply_chain(x, 44100, params, gens()))


def test_seeded_generator_makes_it_deterministic():
    x = torch.randn(1, 1, 22050) * 0.1
    params = _params(0.5, 44)
    first = apply_chain(x, 44100, params, torch.Generator().manual_seed(9))
    torch.testing.assert_close(apply_chain(x, 44100, params, torch.Generator().manual_seed(9)), first)
    assert not torch.allclose(apply_chain(x, 44100, params, torch.Generator().manual_seed(10)), first)


def test_batched_item_equals_single_run():
    x = torch.randn(3, 2, 22050) * torch.tensor([0.05, 0.2, 0.4]).view(3, 1, 1)
    params = _params([0.2, 0.5, 0.9], 44)
    seeds = (1, 2, 3)
    batched = apply_chain(x, 44100, params, [torch.Generator().manual_seed(s) for s in seeds])
    repaired = invert_chain(batched, 44100, params)
    for i, s in enumerate(seeds):
        one = {k: v[i : i + 1] for k, v in params.items()}
        single = apply_chain(x[i : i + 1], 44100, one, torch.Generator().manual_seed(s))
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-4, rtol=1e-4)  # FFT sizes differ
        torch.testing.assert_close(repaired[i : i + 1], invert_chain(single, 44100, one), atol=1e-4, rtol=1e-4)


@needs_music
@pytest.mark.parametrize("index,u", [(0, 0.3), (1, 0.7), (1, 0.5)])
def test_invert_chain_repairs_real_music(index, u):
    x = _music(index, 3.0) * 0.7
    params = _params(u, 1 + x.shape[-1] // 512)
    y = apply_chain(x, 44100, params, torch.Generator().manual_seed(index))
    headroom = 10 ** (params["output_gain_db"].item() / 20)
    x_hat = invert_chain(y, 44100, params)
    # The reverb's inverse is the approximate one: it bounds what the chain can recover.
    assert _log_mel_error_db(x, x_hat) < 0.8 * _log_mel_error_db(x, y / headroom)
    assert _snr_db(x, x_hat) > _snr_db(x, y / headroom) + 1


@needs_music
@pytest.mark.parametrize("index,u", [(0, 0.3), (1, 0.7), (1, 0.5)])
def test_invert_chain_is_near_exact_without_reverb(index, u):
    x = _music(index, 3.0) * 0.7
    params = {**_params(u, 1 + x.shape[-1] // 512), "reverb_wet": torch.zeros(1)}
    y = apply_chain(x, 44100, params)
    assert _snr_db(x, y / 10 ** (params["output_gain_db"].item() / 20)) < 15  # the chain does change it
    assert _snr_db(x, invert_chain(y, 44100, params)) > 35


def test_trajectories_from_44k_frames_drive_48k_audio():
    x = torch.randn(1, 2, 48000) * 0.1
    params = _params(0.4, 1 + 44100 // 512)  # one second of 44.1 kHz frames
    y = apply_chain(x, 48000, params, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert _snr_db(x, invert_chain(y, 48000, params)) > _snr_db(x, y / 10 ** (params["output_gain_db"].item() / 20))


@needs_music
@pytest.mark.parametrize("u", [0.2, 0.9])
def test_fast_cpu_inverse_equals_the_differentiable_one(u):
    # Without autograd the CPU inverse runs frame-major numpy kernels and a time-domain echo
    # inverse; with it, the torch formulas. Same repair.
    x = _music(1, 2.0)
    params = _params(u, 1 + x.shape[-1] // 512)
    y = apply_chain(x, 44100, params, torch.Generator().manual_seed(0))
    fast = invert_chain(y, 44100, params)
    with torch.enable_grad():
        slow = invert_chain(y.clone().requires_grad_(), 44100, params).detach()
    assert _snr_db(slow, fast) > 60


@needs_music
@pytest.mark.parametrize("u", [0.2, 0.9])
@pytest.mark.parametrize("channels", CHANNELS)
def test_fast_cpu_chain_equals_the_differentiable_one(u, channels):
    # Without autograd the CPU chain runs frame-major numpy/numba (what the demaster job uses);
    # with it, the torch formulas. Same audio up to float rounding, same generator draws.
    x = torch.cat([_music(0, 2.0), _music(1, 2.0)])[:, :channels]  # (2, C, T): a batch of two
    params = _params([u, 1 - u], 1 + x.shape[-1] // 512)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    fast = apply_chain(x, 44100, params, gens())
    with torch.enable_grad():
        slow = apply_chain(x.clone().requires_grad_(), 44100, params, gens()).detach()
    torch.testing.assert_close(fast, slow, atol=2e-6, rtol=0)
    rows = stft_rows(x.reshape(2 * channels, -1).numpy())
    before = rows.copy()
    torch.testing.assert_close(apply_chain(x, 44100, params, gens(), stft_rows_x=rows), fast)
    assert np.array_equal(rows, before)  # the caller's spectra are left alone
    torch.testing.assert_close(apply_chain(x, 44100, params, gens(), stft_x=stft(x)), fast, atol=1e-6, rtol=0)
    with torch.enable_grad():  # frame-major spectra given to the torch path
        given = apply_chain(x.clone().requires_grad_(), 44100, params, gens(), stft_rows_x=rows).detach()
    torch.testing.assert_close(given, slow, atol=1e-6, rtol=0)


@needs_music
def test_gradients_reach_every_parameter_through_both_chains():
    x = (_music(1, 1.0) * 2.0).requires_grad_()  # loud enough to cross the knee
    params = {k: v.clone().requires_grad_() for k, v in _params(0.7, 1 + x.shape[-1] // 512).items()}
    params["comp_knee_db"] = torch.tensor([12.0], requires_grad=True)
    y = apply_chain(x, 44100, params, torch.Generator().manual_seed(0))
    (y.square().mean() + invert_chain(y, 44100, params).square().mean()).backward()
    for name, v in [("x", x), *params.items()]:
        assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0, name
    # and each chain alone reaches all of them
    for chain in ("apply", "invert"):
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        xi = x.detach()
        out = apply_chain(xi, 44100, p, torch.Generator().manual_seed(0)) if chain == "apply" else invert_chain(xi, 44100, p)
        out.square().mean().backward()
        dead = [k for k, v in p.items() if not (torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0)]
        assert not dead, (chain, dead)


@pytest.mark.parametrize("channels", CHANNELS)
def test_gain_and_its_inverse(channels):
    x = torch.randn(2, channels, 100)
    g = torch.tensor([-6.0, -20.0])
    y = gain(x, 44100, g)
    torch.testing.assert_close(y[1], x[1] * 0.1)
    torch.testing.assert_close(gain_inverse(y, 44100, g), x)


def test_bad_inputs_raise_clear_errors():
    x = torch.zeros(1, 1, 4096)
    params = neutral_params(1, 9)
    with pytest.raises(ValueError, match=r"expected \(B, C, T\) audio, got shape \(4096,\)"):
        apply_chain(x[0, 0], 44100, params)
    with pytest.raises(ValueError, match=r"missing \['echo_gain'\]"):
        apply_chain(x, 44100, {k: v for k, v in params.items() if k != "echo_gain"})
    with pytest.raises(ValueError, match=r"unknown \['echo_gian'\]"):
        invert_chain(x, 44100, {**params, "echo_gian": torch.zeros(1)})
    with pytest.raises(ValueError, match="stft_rows_x of shape"):
        apply_chain(x, 44100, params, stft_rows_x=np.zeros((1, 3, 1025), np.complex64))
    with pytest.raises(ValueError, match="stft_x of shape"):
        apply_chain(x, 44100, params, stft_x=torch.zeros(1, 1, 1025, 3, dtype=torch.complex64))
