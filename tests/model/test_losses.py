import math

import pytest
import torch

from automaster.config import LossConfig
from automaster.effects.params import N_PARAMS, PARAM_NAMES
from automaster.model.losses import (
    CompositeLoss,
    MelL1,
    MelMultiScaleLoss,
    MultiResolutionSTFTLoss,
    ParamLoss,
    STFTLoss,
    mel_l1_db,
)




def test_mel_l1_and_db_helper_are_analytic():
    target = torch.rand(2, 1, 128, 10) * 0.8
    inp = target + 0.1
    assert MelL1()(inp, target).item() == pytest.approx(0.1, abs=1e-6)
    assert mel_l1_db(inp, target).item() == pytest.approx(10.0, abs=1e-4)  # 100 dB range
    assert mel_l1_db(inp, target, db_range=120.0).item() == pytest.approx(12.0, abs=1e-4)


def test_param_loss_is_huber_with_delta():
    loss = ParamLoss(delta=0.1)
    target = torch.full((2, N_PARAMS, 5), 0.3)
    # Quadratic below delta, linear above it.
    assert loss(target + 0.05, target).item() == pytest.approx(0.5 * 0.05**2, rel=1e-4)
    assert loss(target + 0.5, target).item() == pytest.approx(0.1 * (0.5 - 0.05), rel=1e-4)
    assert loss(target, target).item() == 0.0


def test_param_loss_is_not_identically_zero_and_has_gradient():
    torch.manual_seed(0)
    pred = torch.rand(3, N_PARAMS, 7, requires_grad=True)
    target = torch.rand(3, N_PARAMS, 7)
    value = ParamLoss()(pred, target)
    assert value.item() > 1e-3
    value.backward()
    assert pred.grad.abs().sum() > 0


def test_param_loss_weights_select_parameters():
    target = torch.zeros(1, N_PARAMS, 4)
    pred = target.clone()
    pred[:, 0] = 0.5  # error only on the first parameter
    ignore_first = ParamLoss(weights={PARAM_NAMES[0]: 0.0})
    only_first = ParamLoss(weights=[1.0] + [0.0] * (N_PARAMS - 1))
    assert ignore_first(pred, target).item() == 0.0
    assert only_first(pred, target).item() == pytest.approx(ParamLoss()(pred, target).item() * N_PARAMS, rel=1e-5)
    with pytest.raises(ValueError, match="unknown parameter"):
        ParamLoss(weights={"nope_db": 1.0})
    with pytest.raises(ValueError, match="weights"):
        ParamLoss(weights=[1.0, 2.0])


def test_mr_stft_is_zero_for_identical_and_grows_with_noise():
    torch.manual_seed(0)
    t = torch.arange(8192) / 44100
    x = (0.5 * torch.sin(2 * math.pi * 440 * t)).view(1, 1, -1).repeat(2, 2, 1)
    noise = torch.randn_like(x)
    loss = MultiResolutionSTFTLoss()
    assert loss(x, x.clone()).item() == 0.0
    values = [loss(x + a * noise, x).item() for a in (1e-3, 1e-2, 1e-1)]
    assert 0 < values[0] < values[1] < values[2]


def test_mr_stft_gradient_is_finite_at_identity_and_points_home():
    x = torch.randn(1, 1, 4096)
    y = (x * 0.5).requires_grad_()
    loss = MultiResolutionSTFTLoss((256, 512))
    loss(y, x).backward()
    assert torch.isfinite(y.grad).all()
    # A small step against the gradient lowers the loss.
    with torch.no_grad():
        before = loss(y, x).item()
        after = loss(y - 1e-3 * y.grad / y.grad.abs().max(), x).item()
    assert after < before
    z = x.clone().requires_grad_()
    loss(z, x).backward()
    assert torch.isfinite(z.grad).all()


def test_stft_loss_spectral_convergence_of_a_scaled_signal():
    """|S_t - a S_t| / |S_t| = |1 - a|; log-magnitude L1 = |log a| (away from the eps floor)."""
    x = torch.randn(1, 1, 4096) + 0.1
    loss = STFTLoss(512)
    assert loss(0.5 * x, x).item() == pytest.approx(0.5 + math.log(2.0), rel=1e-3)


def test_mel_multiscale_loss():
    torch.manual_seed(0)
    target = torch.rand(2, 1, 128, 40) * 0.8
    loss = MelMultiScaleLoss()
    assert loss(target, target.clone()).item() == 0.0
    small = loss(target + 0.01, target).item()
    large = loss(target + 0.05, target).item()
    assert 0 < small < large
    # Alternating +-e frame noise averages out at coarse scales: less loss than a constant +e.
    e = 0.05 * (torch.arange(40) % 2 * 2 - 1).float()
    assert loss(target + e, target).item() < large
    one = torch.rand(1, 1, 128, 1)
    assert loss(one * 0.9, one).item() > 0  # a single frame works


def _batch(b=2, f=16, with_waves=False):
    batch = {
        "mel_degraded": torch.rand(b, 1, 128, f),
        "mel_original": torch.rand(b, 1, 128, f),
        "params": torch.rand(b, N_PARAMS, f),
    }
    if with_waves:
        batch["wave_degraded"] = 0.1 * torch.randn(b, 1, (f - 1) * 512)
        batch["wave_original"] = 0.1 * torch.randn(b, 1, (f - 1) * 512)
        batch["sample_rate"] = torch.full((b,), 44100)
    return batch


def test_composite_terms_follow_the_outputs():
    batch = _batch()
    mel = torch.rand(2, 1, 128, 16, requires_grad=True)
    par = torch.rand(2, N_PARAMS, 16, requires_grad=True)
    cfg = LossConfig(mel_l1=1.0, params=2.0, perceptual=0.5)
    loss = CompositeLoss(cfg)

    total, terms = loss({"mel": mel, "params": par}, batch)
    assert set(terms) == {"mel_l1", "params", "perceptual"}
    expected = terms["mel_l1"] + 2.0 * terms["params"] + 0.5 * terms["perceptual"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert mel.grad.abs().sum() > 0 and par.grad.abs().sum() > 0

    _, terms = loss({"mel": mel}, batch)  # restore mode
    assert set(terms) == {"mel_l1", "perceptual"}
    _, terms = loss({"params": par}, batch)  # params mode without waveforms: no perceptual
    assert set(terms) == {"params"}


def test_composite_zero_weight_term_is_logged_but_not_trained():
    batch = _batch()
    mel = torch.rand(2, 1, 128, 16, requires_grad=True)
    par = torch.rand(2, N_PARAMS, 16, requires_grad=True)
    total, terms = CompositeLoss(LossConfig(params=0.0))({"mel": mel, "params": par}, batch)
    assert terms["params"].item() > 0
    assert not terms["params"].requires_grad
    total.backward()
    assert par.grad is None


def test_composite_rejects_mixed_sample_rates():
    batch = _batch(with_waves=True)
    batch["sample_rate"] = torch.tensor([44100, 48000])
    with pytest.raises(ValueError, match="sample rates"):
        CompositeLoss()({"params": torch.rand(2, N_PARAMS, 16)}, batch)


def test_composite_perceptual_uses_the_inverse_chain_with_waveforms():
    batch = _batch(f=16, with_waves=True)
    par = torch.rand(2, N_PARAMS, 16, requires_grad=True)
    total, terms = CompositeLoss()({"params": par}, batch)
    assert set(terms) == {"params", "perceptual"}
    assert torch.isfinite(terms["perceptual"]) and terms["perceptual"].item() > 0
    terms["perceptual"].backward()
    assert par.grad is not None and par.grad.abs().sum() > 0


def test_composite_zero_weight_terms_can_be_skipped():
    mel, par = torch.rand(1, 1, 128, 4), torch.rand(1, N_PARAMS, 4)
    batch = {"mel_original": torch.rand(1, 1, 128, 4), "params": torch.rand(1, N_PARAMS, 4)}
    _, terms = CompositeLoss(LossConfig(params=0.0, log_zero_terms=False))({"mel": mel, "params": par}, batch)
    assert "params" not in terms and "mel_l1" in terms
