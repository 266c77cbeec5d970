"""The torch ballistics (automaster.effects.ballistics) against the numba kernels: the scan, the
detector, the compressor's waveform and every gradient, on real music and on noise."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import soundfile as sf
import torch

from automaster.effects import compressor, compressor_inverse, one_pole_ballistics
from automaster.effects.ballistics import MAX_ROUNDS, ballistics_forward, linear_scan
from automaster.effects.compressor import detector_power

MUSIC = sorted((Path(__file__).resolve().parents[1] / "data" / "music").glob("*.flac"))
needs_music = pytest.mark.skipif(len(MUSIC) < 2, reason="the real music clips in tests/data/music are missing")
# Tolerances of the torch path against numba (float32 audio): the detector agrees to a few float32
# roundings (relative), so the compressor's gain and output agree to ~1e-6 relative.
DETECTOR_RTOL = 2e-6
WAVE_ATOL = 2e-6
GRAD_RTOL = 2e-3  # gradients: float32 sums over 10^5 samples in a different order


def _music(index: int, seconds: float = 2.0) -> tuple[torch.Tensor, int]:
    audio, sr = sf.read(MUSIC[index], dtype="float32", frames=int(seconds * 44100), always_2d=True)
    return torch.from_numpy(audio.T.copy()).unsqueeze(0), sr


def _settings(batch: int = 2) -> dict[str, torch.Tensor]:
    # Row 0: fast attack, slow release; row 1: attack slower than release (the "min" case).
    rows = [dict(threshold_db=-30.0, ratio=4.0, knee_db=6.0, attack_ms=2.0, release_ms=400.0, makeup_db=2.0),
            dict(threshold_db=-24.0, ratio=8.0, knee_db=0.0, attack_ms=50.0, release_ms=30.0, makeup_db=0.0)]
    return {k: torch.tensor([rows[i % 2][k] for i in range(batch)]) for k in rows[0]}


def test_linear_scan_equals_the_sequential_recursion():
    g = torch.Generator().manual_seed(0)
    n = 1000 + 3  # not a power of two
    log_a = -torch.rand(3, n, generator=g, dtype=torch.float64) * torch.tensor([[1e-5], [1e-2], [3.0]], dtype=torch.float64)
    drive = torch.randn(3, n, generator=g, dtype=torch.float64)
    expected = torch.empty_like(drive)
    state = torch.zeros(3, dtype=torch.float64)
    for i in range(n):
        state = torch.exp(log_a[:, i]) * state + drive[:, i]
        expected[:, i] = state
    torch.testing.assert_close(linear_scan(log_a, drive), expected, rtol=1e-12, atol=1e-12)


@needs_music
@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("attack_ms,release_ms", [(2.0, 500.0), (50.0, 30.0), (10.0, 100.0)])
def test_detector_equals_numba_on_real_music(index, attack_ms, release_ms):
    x, sr = _music(index)
    times = torch.tensor([attack_ms]), torch.tensor([release_ms])
    reference = detector_power(x, sr, *times, backend="numba")
    torch.testing.assert_close(detector_power(x, sr, *times, backend="torch"), reference, rtol=DETECTOR_RTOL, atol=1e-12)


def test_noise_bursts_converge_to_the_exact_recursion():
    # White noise power jumps between every sample: the hardest case for the mask.
    g = torch.Generator().manual_seed(1)
    power = torch.randn(4, 20000, generator=g).square() * torch.rand(4, 1, generator=g)
    power[:, 5000:6000] *= 100.0  # a loud burst
    a_att = torch.tensor([0.5, 0.99, 0.999, 0.9999])
    a_rel = torch.tensor([0.9999, 0.999, 0.99, 0.5])  # both orders of attack and release
    smoothed, _, rounds = ballistics_forward(power, a_att, a_rel)
    assert rounds < MAX_ROUNDS
    reference = one_pole_ballistics(power, a_att, a_rel, backend="numba")
    torch.testing.assert_close(smoothed, reference, rtol=DETECTOR_RTOL, atol=1e-12)


@needs_music
def test_compressor_waveform_and_gradients_equal_numba():
    x, sr = _music(0, seconds=1.5)
    x = torch.cat([x, 0.3 * _music(1, seconds=1.5)[0]])  # (2, 2, T): two clips, two settings
    results = {}
    for backend in ("numba", "torch"):
        xb = x.clone().requires_grad_()
        s = {k: v.clone().requires_grad_() for k, v in _settings().items()}
        y = compressor(xb, sr, **s, backend=backend)
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()  # a loss that weighs every sample
        results[backend] = (y.detach(), xb.grad, {k: v.grad for k, v in s.items()})
    (y_n, gx_n, gp_n), (y_t, gx_t, gp_t) = results["numba"], results["torch"]
    torch.testing.assert_close(y_t, y_n, atol=WAVE_ATOL, rtol=1e-5)
    torch.testing.assert_close(gx_t, gx_n, rtol=GRAD_RTOL, atol=1e-4 * gx_n.abs().max().item())
    for name, g in gp_n.items():
        torch.testing.assert_close(gp_t[name], g, rtol=GRAD_RTOL, atol=1e-6 * (1 + g.abs().max().item()), msg=name)


def test_torch_ballistics_gradcheck():
    torch.manual_seed(0)
    p = torch.rand(2, 30, dtype=torch.float64, requires_grad=True)
    a_att = torch.tensor([0.5, 0.97], dtype=torch.float64, requires_grad=True)
    a_rel = torch.tensor([0.9, 0.2], dtype=torch.float64, requires_grad=True)
    fn = lambda *args: one_pole_ballistics(*args, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (p, a_att, a_rel))


def test_the_inverse_takes_the_torch_detector_too():
    x, sr = _music(1, seconds=1.0) if MUSIC else (torch.randn(1, 2, 44100) * 0.1, 44100)
    s = _settings(batch=1)
    y = compressor(x, sr, **s, backend="torch")
    restored = compressor_inverse(y, sr, **s)
    snr = 10 * math.log10(x.square().sum().item() / (x - restored).square().sum().item())
    assert snr > 40


def test_backend_choice():
    power = torch.rand(1, 100)
    coef = torch.tensor([0.9]), torch.tensor([0.99])
    with pytest.raises(ValueError, match=r"expected backend in \('auto', 'numba', 'torch'\), got 'cuda'"):
        one_pole_ballistics(power, *coef, backend="cuda")
    # "auto" on the CPU is the numba kernel: bit-identical to asking for it.
    assert torch.equal(one_pole_ballistics(power, *coef), one_pole_ballistics(power, *coef, backend="numba"))


def test_half_precision_is_smoothed_in_float32():
    g = torch.Generator().manual_seed(2)
    power = torch.rand(2, 5000, generator=g)
    coef = torch.tensor([0.99, 0.9]), torch.tensor([0.9999, 0.999])
    reference = one_pole_ballistics(power, *coef, backend="numba")
    half = one_pole_ballistics(power.bfloat16().requires_grad_(), *coef, backend="torch")
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference, rtol=1e-2, atol=1e-3)  # bf16 output rounding only
