import logging
import time

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from automaster.dsp.griffinlim import griffin_lim, mel_to_audio, spectral_convergence
from automaster.dsp.mel import melspectrogram
from automaster.dsp.stft import n_frames, stft

log = logging.getLogger(__name__)
SR = 44100


def _mono(path, seconds: float) -> torch.Tensor:
    y, sr = sf.read(path, dtype="float32", frames=int(seconds * SR))
    assert sr == SR
    return torch.from_numpy(y.mean(axis=1) if y.ndim == 2 else y)


@pytest.fixture(scope="module")
def music(music_files) -> torch.Tensor:
    """2 s of real music, mono, float32."""
    return _mono(next(p for p in music_files if p.suffix == ".flac"), 2.0)


@pytest.fixture(scope="module")
def magnitude(music) -> torch.Tensor:
    return stft(music).abs()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small FFTs gain nothing from intra-op threads, and on a loaded machine spinning OpenMP
    # workers make them many times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _seed(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def test_convergence_improves_with_iterations(music, magnitude):
    sc = [
        spectral_convergence(magnitude, griffin_lim(magnitude, n_iter=n, length=music.numel(), generator=_seed())).item()
        for n in (4, 16, 64)
    ]
    assert sc[0] > sc[1] > sc[2], sc
    assert sc[2] < 0.08, sc  # 64 fast iterations on real music: ~0.045


def test_as_good_as_librosa_griffinlim_and_momentum_helps(music, magnitude):
    n_iter = 16
    sc = {}
    for momentum in (0.0, 0.99):
        ours = griffin_lim(magnitude, n_iter=n_iter, momentum=momentum, length=music.numel(), generator=_seed())
        ref = librosa.griffinlim(
            magnitude.numpy(), n_iter=n_iter, momentum=momentum, n_fft=2048, hop_length=512,
            length=music.numel(), random_state=0,
        )
        sc[momentum] = spectral_convergence(magnitude, ours).item()
        sc_ref = spectral_convergence(magnitude, torch.from_numpy(ref)).item()
        assert sc[momentum] <= 1.1 * sc_ref + 0.005, (momentum, sc[momentum], sc_ref)
    assert sc[0.99] < sc[0.0], sc


@pytest.mark.parametrize("as_angle", [False, True])
def test_true_phase_reconstructs_the_signal(music, magnitude, as_angle):
    spec = stft(music)
    init = spec.angle() if as_angle else spec
    y = griffin_lim(magnitude, n_iter=8, init_phase=init, length=music.numel())
    assert spectral_convergence(magnitude, y).item() < 1e-3
    torch.testing.assert_close(y, music, atol=1e-4, rtol=0)


def test_init_phase_broadcasts_over_channels(music):
    stereo = torch.stack([music, 0.5 * music])  # (2, T): the same phase, two magnitudes
    mag = stft(stereo).abs()
    y = griffin_lim(mag, n_iter=2, init_phase=stft(music), length=music.numel())
    assert y.shape == stereo.shape
    torch.testing.assert_close(y, stereo, atol=1e-4, rtol=0)


def test_batched_item_equals_single_run(music):
    hop = 512
    crops = torch.stack([music[i * hop * 20 : i * hop * 20 + hop * 40] for i in range(6)]).reshape(3, 2, -1)
    mag = stft(crops).abs()  # (3, 2, 1025, 41)
    batched = griffin_lim(mag, n_iter=8, generator=_seed(7))
    assert batched.shape == (3, 2, 40 * hop)
    single = griffin_lim(mag[1, 0], n_iter=8, generator=_seed(7))
    torch.testing.assert_close(batched[1, 0], single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("momentum", [0.0, 0.99])
def test_frame_major_cpu_path_equals_the_torch_one(music, magnitude, momentum):
    # No-autograd CPU tensors take the frame-major numpy loop; a tensor that requires grad takes
    # the torch loop (the one other devices run). Same iterations, same result.
    fast = griffin_lim(magnitude, n_iter=6, momentum=momentum, length=music.numel(), generator=_seed(4))
    slow = griffin_lim(magnitude.clone().requires_grad_(), n_iter=6, momentum=momentum, length=music.numel(),
                       generator=_seed(4)).detach()
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    init = griffin_lim(magnitude, n_iter=2, init_phase=stft(music), length=music.numel())
    torch.testing.assert_close(init, music, atol=1e-4, rtol=0)


def test_seed_determinism(magnitude):
    a = griffin_lim(magnitude, n_iter=2, generator=_seed(1))
    b = griffin_lim(magnitude, n_iter=2, generator=_seed(1))
    c = griffin_lim(magnitude, n_iter=2, generator=_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_shapes_lengths_and_errors(magnitude, music):
    frames = magnitude.shape[-1]
    assert griffin_lim(magnitude, n_iter=1).shape == ((frames - 1) * 512,)
    assert griffin_lim(magnitude, n_iter=1, length=music.numel()).shape == music.shape
    assert griffin_lim(magnitude.double(), n_iter=1).dtype == torch.float64
    with pytest.raises(ValueError, match="frames"):
        griffin_lim(magnitude, length=music.numel() + 4 * 512)
    with pytest.raises(ValueError, match="1025"):
        griffin_lim(magnitude[:-1])
    with pytest.raises(ValueError, match="broadcast"):
        griffin_lim(magnitude, init_phase=torch.zeros(3, 1025, frames))
    with pytest.raises(ValueError, match="frames"):
        spectral_convergence(magnitude, music[: 512 * 10])


def test_spectral_convergence_is_per_item(magnitude, music):
    mags = torch.stack([magnitude, magnitude])
    waves = torch.stack([music, torch.zeros_like(music)])
    sc = spectral_convergence(mags, waves)
    assert sc.shape == (2,)
    assert sc[0].item() < 1e-5
    assert sc[1].item() == pytest.approx(1.0, rel=1e-4)


def test_mel_to_audio_comparable_to_librosa(music_files):
    y = _mono(next(p for p in music_files if p.suffix == ".flac"), 1.5)
    mel = melspectrogram(y)  # (128, F)
    target = stft(y).abs()

    t0 = time.perf_counter()
    ours = mel_to_audio(mel, SR, n_iter=32, length=y.numel(), generator=_seed())
    t_ours = time.perf_counter() - t0
    np.random.seed(0)  # librosa's random initial phase comes from numpy's global RNG
    t0 = time.perf_counter()
    ref = librosa.feature.inverse.mel_to_audio(
        mel.numpy(), sr=SR, n_fft=2048, hop_length=512, n_iter=32, length=y.numel()
    )
    t_ref = time.perf_counter() - t0

    sc_ours = spectral_convergence(target, ours).item()
    sc_ref = spectral_convergence(target, torch.from_numpy(ref)).item()
    log.info("mel_to_audio 1.5 s: ours %.3f s SC %.3f; librosa %.3f s SC %.3f", t_ours, sc_ours, t_ref, sc_ref)
    assert ours.shape == y.shape
    assert sc_ours <= 1.2 * sc_ref, (sc_ours, sc_ref)  # pinv vs NNLS: ~0.29 vs ~0.26 here, equal on 30 s
    # And it is a faithful mel inversion: the mel of the result is close to the given mel.
    mel_back = melspectrogram(ours)
    assert ((mel_back.sqrt() - mel.sqrt()).norm() / mel.sqrt().norm()).item() < 0.2


def test_mel_to_audio_batched_shapes(music):
    mel = melspectrogram(music[: 512 * 30]).expand(2, 3, 128, n_frames(512 * 30))
    out = mel_to_audio(mel, n_iter=1, generator=_seed())
    assert out.shape == (2, 3, 512 * 30)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(magnitude):
    cpu = griffin_lim(magnitude, n_iter=8, generator=_seed(3))
    gpu = griffin_lim(magnitude.cuda(), n_iter=8, generator=_seed(3))
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)
