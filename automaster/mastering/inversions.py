"""The three ways the model's output becomes audio, rendered per chunk of native-rate audio.

* ``chain`` (phase-free; needs the forecaster): the forecast parameters drive the inverse effects
  chain on the original waveform at its native rate, one parameter set for all channels.
* ``mask`` (needs the U-Net): the mel gain (restored - input, dB) is interpolated to the STFT bins
  at the native rate (``n_fft`` scaled with the rate) and applied to every channel's STFT,
  keeping the input's phase.
* ``griffinlim`` (the thesis path): each channel's mel plus the mel gain -> Griffin-Lim at the
  model rate (optionally from the input's phase) -> back to the native rate.

:func:`griffinlim_audio` is also the evaluation's oracle-mel Griffin-Lim, so the oracle and the
path share every setting.
"""

from __future__ import annotations

import functools
from typing import Any

import librosa
import numpy as np
import torch

from automaster.config import AudioConfig, MasterConfig
from automaster.dsp.constants import MODEL_RATE
from automaster.dsp.griffinlim import mel_to_audio
from automaster.dsp.mel import mel_filterbank, melspectrogram
from automaster.dsp.scale import db_to_power, power_to_db
from automaster.dsp.stft import istft, istft_rows, n_frames, power_rows, stft, stft_rows
from automaster.effects.chain import invert_chain
from automaster.effects.params import PARAMS
from automaster.mastering.chunks import Chunk, fit_frames, interp_frames, resample

# Griffin-Lim's random phase is seeded per chunk: seed * this + the chunk's first frame.
_SEED_STRIDE = 1_000_003


def mel_db(y: torch.Tensor, audio_cfg: AudioConfig) -> torch.Tensor:
    """``(C, T)`` at the model rate -> mel dB ``(C, M, 1 + T // hop)``; on the CPU through the
    frame-major STFT (the same values to float rounding)."""
    a = audio_cfg
    if y.device.type != "cpu":
        return power_to_db(melspectrogram(y, MODEL_RATE, a.n_fft, a.hop_length, a.n_mels))
    power = torch.from_numpy(power_rows(stft_rows(y.numpy(), a.n_fft, a.hop_length)))  # (C, F, K)
    fb = mel_filterbank(MODEL_RATE, a.n_fft, a.n_mels).to(power.dtype)  # (M, K)
    return power_to_db(torch.matmul(power, fb.T).transpose(1, 2))


@functools.lru_cache(maxsize=16)
def _mel_to_bins(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """``(n_bins, n_mels)`` linear interpolation from the model-rate mel band centres to the STFT
    bins of ``n_fft`` at ``sample_rate``; bins outside the centres hold the edge band's value."""
    centres = librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=MODEL_RATE / 2.0)[1:-1]
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    eye = np.eye(n_mels)
    matrix = np.stack([np.interp(freqs, centres, eye[m]) for m in range(n_mels)], axis=1)
    return torch.from_numpy(matrix.astype(np.float32))


def render_chain(seg: np.ndarray, sr: int, c: Chunk, physical: dict[str, torch.Tensor], hop: int, device: torch.device) -> np.ndarray:
    """The inverse chain on ``seg`` ``(C, n)`` with the track's parameters (``physical``: per
    frame ``(1, F_global)``, per clip ``(1,)``)."""
    n = seg.shape[-1]
    # Chunk STFT frame k (hop at the native rate) sits at global model-rate frame g.
    times = (c.s0 + np.arange(1 + n // hop) * hop) / sr * MODEL_RATE / hop
    params = {p.name: interp_frames(physical[p.name], times) if p.per_frame else physical[p.name] for p in PARAMS}
    x = torch.from_numpy(seg).to(device)[None]
    return invert_chain(x, sr, params)[0].cpu().numpy()


@functools.lru_cache(maxsize=16)
def _model_bins_to_bins(sample_rate: int, n_fft: int, n_model_bins: int) -> torch.Tensor:
    """``(n_bins, n_model_bins)`` linear interpolation from the model-rate STFT bins (the spectral
    restorer's gain) to the STFT bins of ``n_fft`` at ``sample_rate`` (the identity at the model rate)."""
    centres = np.linspace(0.0, MODEL_RATE / 2.0, n_model_bins)
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    eye = np.eye(n_model_bins)
    return torch.from_numpy(np.stack([np.interp(freqs, centres, eye[k]) for k in range(n_model_bins)], axis=1).astype(np.float32))


def render_mask(seg: np.ndarray, sr: int, c: Chunk, gain_db: torch.Tensor, audio_cfg: AudioConfig, device: torch.device) -> np.ndarray:
    """``seg`` ``(C, n)`` with the gain ``(bands, F_global)`` applied to its STFT (input phase): mel
    bands (the U-Net's), or the model-rate STFT's ``n_fft // 2 + 1`` bins (the spectral restorer's)."""
    n = seg.shape[-1]
    n_fft = max(16, 2 * int(round(audio_cfg.n_fft / 2 * sr / MODEL_RATE)))
    hop = max(1, n_fft // 4)
    times = (c.s0 + np.arange(n_frames(n, hop)) * hop) / sr * MODEL_RATE / audio_cfg.hop_length
    gain_mel = interp_frames(gain_db, times)  # (bands, nfr)
    bands = gain_mel.shape[0]
    to_bins = _model_bins_to_bins(sr, n_fft, bands) if bands == audio_cfg.n_fft // 2 + 1 else _mel_to_bins(sr, n_fft, bands)
    to_bins = to_bins.to(gain_mel.device)  # (bins, bands)
    if device.type == "cpu":  # frame-major: (C, nfr, bins) spectra, one gain row per frame
        spec = stft_rows(seg, n_fft, hop)
        spec *= torch.pow(10.0, (gain_mel.T @ to_bins.T) / 20.0).numpy()  # (nfr, bins)
        return istft_rows(spec, n, n_fft, hop)
    spec = stft(torch.from_numpy(seg).to(device), n_fft, hop)  # (C, bins, nfr)
    spec = spec * torch.pow(10.0, (to_bins @ gain_mel) / 20.0)
    return istft(spec, n, n_fft, hop).cpu().numpy()


def griffinlim_audio(
    target_mel_db: torch.Tensor, length: int, audio_cfg: AudioConfig, settings: MasterConfig,
    init_from: torch.Tensor | None = None, first_frame: int = 0,
) -> torch.Tensor:
    """Griffin-Lim at the model rate from a mel in dB ``(C, M, F)`` -> ``(C, length)``.

    Starts from ``init_from``'s phase (``(C, length)`` audio) when ``settings.init_phase``, else
    from a random phase seeded by ``settings.seed`` and ``first_frame`` (the same input, the same
    output).
    """
    a = audio_cfg
    init = stft(init_from, a.n_fft, a.hop_length) if settings.init_phase and init_from is not None else None
    generator = torch.Generator(device=target_mel_db.device).manual_seed(settings.seed * _SEED_STRIDE + first_frame)
    return mel_to_audio(
        db_to_power(target_mel_db), sample_rate=MODEL_RATE, n_iter=settings.iterations, momentum=settings.momentum,
        length=length, init_phase=init, generator=generator, n_fft=a.n_fft, hop_length=a.hop_length,
    )


def render_griffinlim(
    seg: np.ndarray, sr: int, c: Chunk, gain_db: torch.Tensor, audio_cfg: AudioConfig, settings: MasterConfig,
    device: torch.device,
) -> np.ndarray:
    """Per channel: its mel plus the mel gain -> Griffin-Lim -> ``(C, n)`` at the native rate."""
    n = seg.shape[-1]
    y = torch.from_numpy(resample(seg, sr, MODEL_RATE)).to(device)  # (C, n_model)
    nfr = 1 + y.shape[-1] // audio_cfg.hop_length
    target = fit_frames(mel_db(y, audio_cfg), nfr) + fit_frames(gain_db[..., c.f0 : c.f1], nfr)  # (C, M, nfr)
    wave = griffinlim_audio(target, y.shape[-1], audio_cfg, settings, init_from=y, first_frame=c.f0)
    return resample(wave.float().cpu().numpy().reshape(seg.shape[0], -1), MODEL_RATE, sr, length=n)


def render(
    inversion: str, seg: np.ndarray, sr: int, c: Chunk, controls: dict[str, Any], audio_cfg: AudioConfig,
    settings: MasterConfig, device: torch.device,
) -> np.ndarray:
    """One chunk ``(C, n)`` of audio by ``inversion`` from the track's stitched ``controls``."""
    if inversion == "chain":
        return render_chain(seg, sr, c, controls["physical"], audio_cfg.hop_length, device)
    if inversion == "mask":
        return render_mask(seg, sr, c, controls["gain_db"], audio_cfg, device)
    return render_griffinlim(seg, sr, c, controls["gain_db"], audio_cfg, settings, device)
