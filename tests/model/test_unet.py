import pytest
import torch

from automaster.model.unet import UNet, bounded_residual


@pytest.fixture
def unet():
    torch.manual_seed(0)
    return UNet(depth=3, width=4)


@pytest.mark.parametrize("n_frames", [1, 7, 100, 257])
def test_output_has_exactly_the_input_shape(unet, n_frames):
    mel = torch.rand(2, 1, 128, n_frames)
    out = unet(mel)
    assert out["mel"].shape == mel.shape
    assert out["gain"].shape == mel.shape
    assert out["features"].shape == (2, 4, 128, n_frames)
    assert torch.allclose(out["gain"], out["mel"] - mel)


def test_output_stays_in_unit_range_even_for_large_moves(unet):
    with torch.no_grad():
        unet.head.weight.mul_(1000.0)  # huge moves: the mapping must still bound them
    out = unet(torch.rand(2, 1, 128, 33))["mel"]
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out - 0.5).abs().max() > 0.45  # the moves really are large


def test_frames_are_not_mixed_across_the_padding(unet):
    """Cropping is exact: the first frames depend on the input, not on where it was cut."""
    unet.eval()
    mel = torch.rand(1, 1, 128, 64)
    full = unet(mel)["mel"]
    # 64 frames need no padding at depth 3; 61 frames are padded to 64 inside and cropped back.
    short = unet(mel[..., :61])["mel"]
    assert short.shape[-1] == 61
    # Far from the cut, the receptive field never sees the padding.
    assert torch.allclose(full[..., :8], short[..., :8], atol=1e-5)


def test_bounded_residual_identity_and_bounds():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(bounded_residual(x, torch.zeros(3)), x)
    assert torch.allclose(bounded_residual(x, torch.full((3,), 50.0)), torch.ones(3))
    assert torch.allclose(bounded_residual(x, torch.full((3,), -50.0)), torch.zeros(3))


def test_floor_bins_can_be_raised_with_full_gradient():
    x = torch.zeros(4)
    h = torch.zeros(4, requires_grad=True)
    bounded_residual(x, h).sum().backward()
    assert torch.allclose(h.grad, torch.ones(4))  # d/dh tanh(h) * (1 - x) at h = 0


def test_gradients_reach_every_parameter(unet):
    mel = torch.rand(2, 1, 128, 19)
    target = torch.rand_like(mel)
    (unet(mel)["mel"] - target).abs().mean().backward()
    missing = [n for n, p in unet.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_rejects_bad_shapes(unet):
    with pytest.raises(ValueError, match="n_mels=100"):
        unet(torch.rand(1, 1, 100, 8))
    with pytest.raises(ValueError, match="mel"):
        unet(torch.rand(1, 128, 8))


def test_default_size_is_a_few_million_parameters():
    n = sum(p.numel() for p in UNet().parameters())
    assert 1_000_000 < n < 4_000_000
