import pytest
import torch

from automaster.effects import params as table
from automaster.model.forecaster import Forecaster


@pytest.fixture
def forecaster():
    torch.manual_seed(0)
    return Forecaster(in_channels=2, hidden=8, layers=2)


@pytest.mark.parametrize("n_frames", [1, 7, 100, 257])
def test_shapes_for_any_frame_count(forecaster, n_frames):
    out = forecaster(torch.rand(3, 2, 128, n_frames))
    assert out.shape == (3, table.N_PARAMS, n_frames)
    assert out.min() > 0.0 and out.max() < 1.0


def test_no_gradient_dead_zone_at_extreme_logits(forecaster):
    """A sigmoid, not a clamp: predictions pushed near a bound still get gradient."""
    with torch.no_grad():
        forecaster.head.bias.fill_(6.0)
    mel = torch.rand(1, 2, 128, 5)
    out = forecaster(mel)
    assert out.min() > 0.99
    out.sum().backward()
    assert forecaster.head.bias.grad.abs().min() > 0


def test_reads_frequency_structure_not_just_frame_means(forecaster):
    """Two mels with the same per-frame mean but energy at different bands must differ."""
    forecaster.eval()
    low = torch.zeros(1, 2, 128, 10)
    high = torch.zeros(1, 2, 128, 10)
    low[:, :, :16] = 0.8
    high[:, :, -16:] = 0.8
    assert torch.allclose(low.mean(dim=2), high.mean(dim=2))
    f_low, f_high = forecaster.frontend(low), forecaster.frontend(high)  # (1, F, D)
    assert (f_low - f_high).norm() > 0.1 * f_low.norm()
    assert (forecaster(low) - forecaster(high)).abs().max() > 1e-6  # float noise is ~1e-8


def test_bidirectional_context(forecaster):
    """Changing the last frame changes the prediction at the first frame (backward LSTM)."""
    forecaster.eval()
    mel = torch.rand(1, 2, 128, 12)
    other = mel.clone()
    other[..., -1] = 1.0 - other[..., -1]
    assert (forecaster(mel)[..., 0] - forecaster(other)[..., 0]).abs().max() > 0


def test_gradients_reach_every_parameter(forecaster):
    out = forecaster(torch.rand(2, 2, 128, 9))
    (out - torch.rand_like(out)).square().mean().backward()
    missing = [n for n, p in forecaster.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_per_clip_parameters_are_averaged_by_unstack(forecaster):
    out = forecaster(torch.rand(2, 2, 128, 6))
    phys = table.unstack(out)
    for i, spec in enumerate(table.PARAMS):
        if spec.per_frame:
            assert phys[spec.name].shape == (2, 6)
        else:
            assert phys[spec.name].shape == (2,)
            assert torch.allclose(phys[spec.name], spec.denormalize(out[:, i].mean(-1)))
        assert (phys[spec.name] >= spec.low - 1e-4).all() and (phys[spec.name] <= spec.high + 1e-4).all()


def test_rejects_wrong_channels(forecaster):
    with pytest.raises(ValueError, match="expected"):
        forecaster(torch.rand(1, 1, 128, 4))
