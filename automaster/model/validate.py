"""Validation metrics that do not depend on the loss weights (so runs and trials compare).

* ``val/mel_l1_db``: mean |restored - clean| mel in dB (the U-Net's mel in restore/cascade
  mode, the mel of the inverse chain's output in params mode); ``..._identity``: the degraded
  input's distance, the do-nothing baseline.
* ``val/mrstft``: multi-resolution STFT distance of the inverse chain's output to the clean
  waveform (params/cascade modes); ``val/mrstft_identity`` likewise for the degraded input.
* ``val/mae/<param>``: forecast error in physical units; ``val/mae_baseline/<param>``: the
  error of always predicting the training mean; ``val/mae_ratio``: their mean ratio.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from automaster.config import AudioConfig
from automaster.dsp.mel import melspectrogram
from automaster.dsp.scale import denormalize_fixed, normalize_minmax, power_to_db
from automaster.effects.params import PARAMS, unstack
from automaster.model.batches import full_example
from automaster.model.losses import MultiResolutionSTFTLoss


def denormalize_mel(u: torch.Tensor, audio: AudioConfig, degraded_db: torch.Tensor) -> torch.Tensor:
    """Normalised model mel -> dB (``minmax`` uses the degraded input's per-clip stats)."""
    if audio.normalization == "fixed":
        return denormalize_fixed(u, audio.db_min, audio.db_max)
    _, lo, hi = normalize_minmax(degraded_db)
    shape = (-1,) + (1,) * (u.dim() - 1)
    return u * (hi - lo).view(shape) + lo.view(shape)



def validation_metrics(
    model: torch.nn.Module,
    rows: list[dict[str, Any]],
    audio: AudioConfig,
    means: dict[str, float] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], dict[str, Any] | None]:
    """Metrics averaged over full-length ``rows``; also the first row's mels for a figure."""
    totals, figure = validation_totals(model, rows, audio, means, device)
    return metrics_from_totals(totals), figure


@torch.no_grad()
def validation_totals(
    model: torch.nn.Module,
    rows: list[dict[str, Any]],
    audio: AudioConfig,
    means: dict[str, float] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, tuple[float, int]], dict[str, Any] | None]:
    """Per metric, ``(sum over rows, number of rows)``; also the first row's mels for a figure.

    Totals of disjoint row sets add up (distributed validation: every rank validates a share
    of the rows, the totals are all-reduced, :func:`metrics_from_totals` averages them).
    """
    model.eval()
    mrstft = MultiResolutionSTFTLoss()
    sums: dict[str, list[float]] = defaultdict(list)
    figure = None
    for row in rows:
        batch = {k: v.to(device) for k, v in full_example(row, audio).items()}
        out = model(batch["mel_degraded"])
        clean_db, degraded_db = batch["mel_original_db"], batch["mel_degraded_db"]
        sums["val/mel_l1_db_identity"].append(float((degraded_db - clean_db).abs().mean()))
        restored_db = None
        if "mel" in out:
            restored_db = denormalize_mel(out["mel"], audio, degraded_db)
            sums["val/mel_l1_db"].append(float((restored_db - clean_db).abs().mean()))
        if "params" in out:
            predicted = unstack(out["params"])
            for p in PARAMS:
                target = torch.as_tensor(np.asarray(row[p.name], dtype=np.float32), device=device)
                pred = predicted[p.name][0]
                if p.per_frame:
                    pred = torch.nn.functional.interpolate(pred[None, None], size=target.numel(), mode="linear")[0, 0]
                sums[f"val/mae/{p.name}"].append(float((pred - target).abs().mean()))
                if means is not None:
                    sums[f"val/mae_baseline/{p.name}"].append(float((means[p.name] - target).abs().mean()))
            if "wave_degraded" in batch:
                from automaster.model.cascade import restore_waveform

                wave_d, wave_o = batch["wave_degraded"], batch["wave_original"]  # (1, 1, T)
                repaired = restore_waveform(wave_d, int(row["sample_rate"]), out["params"])
                sums["val/mrstft"].append(float(mrstft(repaired, wave_o)))
                sums["val/mrstft_identity"].append(float(mrstft(wave_d, wave_o)))
                chain_db = power_to_db(melspectrogram(repaired[:, 0], int(row["sample_rate"]), audio.n_fft, audio.hop_length, audio.n_mels))
                n = min(chain_db.shape[-1], clean_db.shape[-1])
                chain_l1 = float((chain_db[..., :n] - clean_db[:, 0, :, :n]).abs().mean())
                sums["val/chain_mel_l1_db"].append(chain_l1)
                if restored_db is None:
                    sums["val/mel_l1_db"].append(chain_l1)
                    restored_db = chain_db[:, None]
        if figure is None:
            figure = {
                "degraded": degraded_db[0, 0].cpu().numpy(),
                "restored": None if restored_db is None else restored_db[0, 0].cpu().numpy(),
                "clean": clean_db[0, 0].cpu().numpy(),
            }
    return {k: (float(np.sum(v)), len(v)) for k, v in sums.items()}, figure


def metrics_from_totals(totals: dict[str, tuple[float, int]]) -> dict[str, float]:
    """``(sum, count)`` per metric -> means, plus ``val/mae_ratio`` (from the means, so it is
    the same whichever way the rows were shared out). Metrics with no rows are left out."""
    metrics = {k: float(total) / n for k, (total, n) in totals.items() if n > 0}
    ratios = [r for name, r in mae_ratios(metrics).items() if name != "output_gain_db"]
    if ratios:
        metrics["val/mae_ratio"] = float(np.mean(ratios))
    return metrics


def mae_ratios(metrics: dict[str, float]) -> dict[str, float]:
    """Per parameter with both in ``metrics``: ``val/mae/<p>`` over ``val/mae_baseline/<p>``
    (the forecast's error as a share of predicting the training mean)."""
    return {
        p.name: metrics[f"val/mae/{p.name}"] / max(metrics[f"val/mae_baseline/{p.name}"], 1e-9)
        for p in PARAMS
        if f"val/mae/{p.name}" in metrics and f"val/mae_baseline/{p.name}" in metrics
    }


@torch.no_grad()
def spectral_validation_totals(
    model: torch.nn.Module, rows: list[dict[str, Any]], audio: AudioConfig, device: torch.device | str = "cpu"
) -> tuple[dict[str, tuple[float, int]], dict[str, Any] | None]:
    """Per metric ``(sum, count)`` of the spectral restorer over full-length ``rows``.

    Each metric comes with ``_identity`` (the degraded input) and, where it applies,
    ``_oracle_gain`` (the input with the true RMS gain to the clean clip, the level head's ideal):
    ``val/mrstft``, ``val/si_sdr_db``, ``val/mel_l1_db``; also ``val/level_error_db`` (the level
    head's error) and ``..._identity`` (no gain at all).
    """
    from automaster.dsp.metrics import si_sdr
    from automaster.model.spectral import level_gain_db

    model.eval()
    mrstft = MultiResolutionSTFTLoss().to(device)
    sums: dict[str, list[float]] = defaultdict(list)
    figure = None

    def mel_db(wave: torch.Tensor) -> torch.Tensor:  # (1, 1, T) -> (M, F)
        return power_to_db(melspectrogram(wave[0, 0], int(audio.sample_rate), audio.n_fft, audio.hop_length, audio.n_mels))

    for row in rows:
        clean = torch.as_tensor(np.asarray(row["wave_original"], np.float32), device=device)[None, None]
        wet = torch.as_tensor(np.asarray(row["wave_degraded"], np.float32), device=device)[None, None]
        out = model(wet)
        true_db = level_gain_db(clean, wet)
        oracle = wet * torch.pow(10.0, true_db / 20.0).view(-1, 1, 1)
        clean_mel = mel_db(clean)
        for name, wave in (("", out["wave"]), ("_identity", wet), ("_oracle_gain", oracle)):
            sums[f"val/mrstft{name}"].append(float(mrstft(wave, clean)))
            sums[f"val/si_sdr_db{name}"].append(si_sdr(wave[0, 0].cpu(), clean[0, 0].cpu()))
            sums[f"val/mel_l1_db{name}"].append(float((mel_db(wave) - clean_mel).abs().mean()))
        sums["val/level_error_db"].append(float((out["level_db"] - true_db).abs().mean()))
        sums["val/level_error_db_identity"].append(float(true_db.abs().mean()))
        if figure is None:
            figure = {"degraded": mel_db(wet).cpu().numpy(), "restored": mel_db(out["wave"]).cpu().numpy(),
                      "clean": clean_mel.cpu().numpy()}  # fmt: skip
    return {k: (float(np.sum(v)), len(v)) for k, v in sums.items()}, figure
