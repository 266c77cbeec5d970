import pytest
import torch

from automaster.config import Config, LossConfig, ModelConfig
from automaster.effects import params as table
from automaster.model.cascade import Cascade, restore_waveform
from automaster.model.losses import CompositeLoss

TINY = dict(unet_depth=2, unet_width=4, lstm_hidden=8, lstm_layers=1)


def tiny(mode="cascade", **kw):
    torch.manual_seed(0)
    return Cascade.from_config(ModelConfig(mode=mode, **{**TINY, **kw}))




@pytest.mark.parametrize("n_frames", [1, 7, 100, 257])
@pytest.mark.parametrize("mode", ["restore", "params", "cascade"])
def test_outputs_per_mode(mode, n_frames):
    model = tiny(mode)
    mel = torch.rand(2, 1, 128, n_frames)
    out = model(mel)
    assert ("mel" in out) == (mode != "params")
    assert ("params" in out) == (mode != "restore")
    if "mel" in out:
        assert out["mel"].shape == mel.shape
        assert 0 <= out["mel"].min() and out["mel"].max() <= 1
        assert torch.allclose(out["mel_gain_db"], (out["mel"] - mel) * 100.0, atol=1e-4)
    if "params" in out:
        assert out["params"].shape == (2, table.N_PARAMS, n_frames)


def test_from_full_config_takes_the_db_range():
    cfg = Config(model=ModelConfig(mode="restore", **TINY))
    cfg = cfg.replace(audio=cfg.audio.__class__(db_min=-80.0, db_max=40.0))
    model = Cascade.from_config(cfg)
    assert model.db_range == 120.0


def test_bad_mode_and_shapes_are_named():
    with pytest.raises(ValueError, match="'mix'"):
        Cascade(mode="mix")
    with pytest.raises(ValueError, match=r"\(B, 1, 128, F\)"):
        tiny()(torch.rand(2, 128, 10))
    with pytest.raises(ValueError, match="predicts none"):
        tiny("restore").restore_waveform(torch.zeros(1, 1, 512), 44100, torch.rand(1, table.N_PARAMS, 2))


def test_gradients_reach_every_parameter_in_cascade_mode():
    model = tiny("cascade")
    batch = {
        "mel_degraded": torch.rand(2, 1, 128, 12),
        "mel_original": torch.rand(2, 1, 128, 12),
        "params": torch.rand(2, table.N_PARAMS, 12),
    }
    total, _ = CompositeLoss()(model(batch["mel_degraded"]), batch)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing
    assert model.n_parameters() == sum(p.numel() for p in model.parameters())


def test_cascade_networks_are_independent_and_outputs_selectable():
    model = tiny("cascade")
    mel = torch.rand(1, 1, 128, 8)
    out = model(mel)
    out["params"].sum().backward()
    # The parameter head does not push on the U-Net, and reads the degraded mel only.
    assert all(p.grad is None for p in model.unet.parameters())
    assert model.forecaster.in_channels == 1
    assert model.outputs == ("mel", "params")
    params_only = model(mel, outputs=("params",))
    assert set(params_only) == {"params"}
    torch.testing.assert_close(params_only["params"], out["params"])
    assert set(model(mel, outputs=("mel",))) == {"mel", "mel_gain_db"}
    with pytest.raises(ValueError, match="has no params output"):
        tiny("restore")(mel, outputs=("params",))


def _structured_batch(n_frames=64):
    """Two clips: tilted spectra with moving harmonics; damage = an EQ bump, a level drop, smear."""
    g = torch.Generator().manual_seed(1)
    bands = torch.linspace(0, 1, 128).view(1, 1, 128, 1)
    frames = torch.linspace(0, 1, n_frames).view(1, 1, 1, n_frames)
    clean = 0.7 - 0.3 * bands + 0.08 * torch.sin(40 * bands + 6 * frames * torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
    clean = clean.clamp(0, 1)  # (2, 1, 128, F)
    centre = torch.tensor([0.3, 0.7]).view(2, 1, 1, 1)
    bump = 0.08 * torch.exp(-((bands - centre) ** 2) / (2 * 0.05**2))
    smear = torch.nn.functional.avg_pool2d(clean, (1, 5), stride=1, padding=(0, 2), count_include_pad=False)
    degraded = (0.7 * clean + 0.3 * smear + bump - 0.05).clamp(0, 1)
    targets = torch.rand(2, table.N_PARAMS, 1, generator=g).expand(-1, -1, n_frames).contiguous()
    return {"mel_degraded": degraded, "mel_original": clean, "params": targets}


def test_overfits_one_small_batch():
    batch = _structured_batch()
    model = tiny("cascade", unet_width=8, lstm_hidden=32)
    loss_fn = CompositeLoss(LossConfig())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(300):
        opt.zero_grad()
        total, _ = loss_fn(model(batch["mel_degraded"]), batch)
        first = total.item() if first is None else first
        total.backward()
        opt.step()
        if total.item() < 0.2 * first:
            break
    # Bounded by steps, not wall time (shared CI cores): typically ~30 steps, ~2 s on 2 cores.
    assert total.item() < 0.2 * first, f"loss {first:.4f} -> {total.item():.4f} after {step + 1} steps"


def test_restore_waveform_passes_gradients_to_the_parameters():
    model = tiny("params")
    wave = 0.1 * torch.randn(2, 2, 15 * 512)
    params_norm = torch.full((2, table.N_PARAMS, 16), 0.5, requires_grad=True)
    out = model.restore_waveform(wave, 44100, params_norm)
    assert out.shape == wave.shape
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert params_norm.grad is not None and params_norm.grad.abs().sum() > 0


def test_restore_waveform_checks_shapes_before_importing_the_chain():
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        restore_waveform(torch.zeros(512), 44100, torch.rand(1, table.N_PARAMS, 2))
    with pytest.raises(ValueError, match="parameters"):
        restore_waveform(torch.zeros(2, 1, 512), 44100, torch.rand(1, table.N_PARAMS, 2))
