"""The spectral restorer: exact lengths, identity at initialisation, bounded outputs, gradients."""

from __future__ import annotations

import pytest
import torch

from automaster.config import load_config
from automaster.model.checkpoint import build_model
from automaster.model.spectral import SpectralLoss, SpectralRestorer, level_gain_db, neg_si_sdr

TINY = dict(width=4, depth=2, stem_stride=8)


@pytest.mark.parametrize("length", [2049, 22051, 44101])
@pytest.mark.parametrize("channels", [1, 2])
def test_output_has_exactly_the_input_length_and_is_the_identity_at_init(length, channels):
    torch.manual_seed(0)
    x = 0.3 * torch.randn(2, channels, length)
    out = SpectralRestorer(**TINY)(x)
    assert out["wave"].shape == x.shape
    assert torch.allclose(out["wave"], x, atol=1e-5)
    assert out["gain_db"].shape == (2, 1025, 1 + length // 512)
    assert torch.equal(out["level_db"], torch.zeros(2))


def test_outputs_stay_within_their_bounds():
    model = SpectralRestorer(**TINY, max_gain_db=3.0, max_level_db=6.0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 5.0)  # far from any trained state
        out = model(0.3 * torch.randn(2, 1, 8192), outputs=("gain_db", "level_db"))
    assert "wave" not in out
    assert out["gain_db"].abs().max() <= 3.0 and out["level_db"].abs().max() <= 6.0


def test_every_parameter_gets_a_gradient_once_the_zero_heads_have_moved():
    torch.manual_seed(0)
    model = SpectralRestorer(**TINY)
    loss_fn = SpectralLoss(load_config(overrides=["loss.si_sdr=1"]).loss)
    x = 0.3 * torch.randn(2, 1, 8192)
    batch = {"wave_original": 0.5 * x, "level_db": torch.full((2,), -6.0)}
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(2):  # the first step moves the zero-initialised heads off zero
        opt.zero_grad()
        total, terms = loss_fn(model(x), batch)
        total.backward()
        opt.step()
    assert set(terms) == {"mrstft", "wave_l1", "si_sdr", "level_db"}
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


def test_level_gain_and_si_sdr_reference_values():
    x = torch.randn(1, 1, 1000)
    assert level_gain_db(x, 0.5 * x).item() == pytest.approx(6.0206, abs=1e-3)
    assert neg_si_sdr(3.0 * x, x).item() < -60  # a gain is no distortion


def test_built_from_the_config_and_refusing_bad_sizes():
    model = build_model(load_config(overrides=["model.mode=spectral", "model.spectral_width=4"]))
    assert isinstance(model, SpectralRestorer) and model.mode == "spectral"
    with pytest.raises(ValueError, match="cannot be halved"):
        SpectralRestorer(width=4, depth=9)
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        model(torch.zeros(100))


def test_width_zero_is_the_level_head_alone():
    model = SpectralRestorer(width=0)
    x = 0.3 * torch.randn(1, 2, 9001)
    out = model(x)
    assert torch.allclose(out["wave"], x, atol=1e-5) and torch.equal(out["gain_db"], torch.zeros(1, 1025, 18))
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"level_mlp"}
