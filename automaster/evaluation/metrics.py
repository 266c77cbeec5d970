"""Distances between an evaluated output and the clean excerpt, and forecast-parameter errors.

Every output is measured against the clean excerpt at the model rate: SI-SDR (waveform-aligned
outputs only: Griffin-Lim invents a phase), the multi-resolution STFT distance (the training
loss's definition, FFT sizes 512/1024/2048), mel L1 in dB, integrated-loudness error in LU and
true peak in dBTP.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from automaster.config import AudioConfig
from automaster.dsp.constants import MODEL_RATE
from automaster.dsp.loudness import true_peak_dbtp
from automaster.dsp.mel import melspectrogram
from automaster.dsp.metrics import loudness_error_lu, mel_l1_db, si_sdr
from automaster.dsp.scale import power_to_db
from automaster.effects.params import PARAMS, resample_frames
from automaster.model.losses import MultiResolutionSTFTLoss

METRICS = ("si_sdr_db", "mrstft", "mel_l1_db", "loudness_err_lu", "true_peak_dbtp")
LOWER_IS_BETTER = {"si_sdr_db": False, "mrstft": True, "mel_l1_db": True, "loudness_err_lu": True, "true_peak_dbtp": None}


def mrstft_distance(
    estimate: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, loss: MultiResolutionSTFTLoss | None = None
) -> float:
    """Multi-resolution STFT distance (spectral convergence + log-magnitude L1, averaged over the
    resolutions) of ``(C, T)`` or ``(B, C, T)`` audio. Pass ``loss`` to reuse one."""
    loss = loss or MultiResolutionSTFTLoss()
    est, ref = (torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in (estimate, reference))
    if est.dim() == 2:
        est, ref = est[None], ref[None]
    with torch.no_grad():
        return float(loss(est, ref))


def clip_mel_db(audio: np.ndarray, audio_cfg: AudioConfig) -> torch.Tensor:
    """Mel in dB ``(C, M, F)`` of ``(C, T)`` audio at the model rate."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    return power_to_db(melspectrogram(x, MODEL_RATE, audio_cfg.n_fft, audio_cfg.hop_length, audio_cfg.n_mels))


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


class Reference:
    """The clean excerpt an output is measured against, with what every measure needs of it."""

    def __init__(self, clean: np.ndarray, audio_cfg: AudioConfig, clean_lufs: float):
        self.clean = clean
        self.audio_cfg = audio_cfg
        self.mel_db = clip_mel_db(clean, audio_cfg)
        self.lufs = clean_lufs
        self.mrstft = MultiResolutionSTFTLoss()

    def measure(self, output: np.ndarray, aligned: bool) -> dict[str, float | None]:
        """Every metric of ``output`` ``(C, T)`` (``None`` where it does not apply)."""
        return {
            "si_sdr_db": _finite(si_sdr(output, self.clean)) if aligned else None,
            "mrstft": _finite(mrstft_distance(output, self.clean, self.mrstft)),
            "mel_l1_db": _finite(mel_l1_db(clip_mel_db(output, self.audio_cfg), self.mel_db)),
            "loudness_err_lu": _finite(loudness_error_lu(output, None, MODEL_RATE, reference_lufs=self.lufs)),
            "true_peak_dbtp": _finite(true_peak_dbtp(output, MODEL_RATE)),
        }


def parameter_errors(params_norm: np.ndarray, truth: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Forecast ``(P, F)`` (normalised) against the true parameters, in physical units.

    ``truth``: name -> per-frame trajectory or per-clip value (only the known ones). Per-clip
    forecasts are the track mean of the normalised prediction, denormalised (what the chain
    applies); trajectories are compared frame by frame after resampling to the truth's frames.
    ``mid_range_abs_err`` is the error of always predicting the middle of the range, a baseline.
    """
    norm = torch.from_numpy(np.asarray(params_norm, dtype=np.float32))
    out = {}
    for i, p in enumerate(PARAMS):
        if p.name not in truth:
            continue
        true = torch.as_tensor(np.asarray(truth[p.name], dtype=np.float32)).reshape(-1)
        if p.per_frame:
            pred = p.denormalize(resample_frames(norm[i][None], max(true.numel(), 1))[0])
            if true.numel() == 1:
                true = true.expand_as(pred)
        else:
            pred = p.denormalize(norm[i].mean()).reshape(1)
        mid = p.denormalize(torch.tensor(0.5))
        out[p.name] = {
            "true": float(true.mean()), "predicted": float(pred.mean()),
            "abs_err": float((pred - true).abs().mean()), "mid_range_abs_err": float((mid - true).abs().mean()),
        }
    return out
