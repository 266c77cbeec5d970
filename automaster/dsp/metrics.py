"""Objective distances between a signal and its reference (numpy/torch, no model).

* :func:`si_sdr`: scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019).
* :func:`mel_l1_db`: mean absolute difference of two mel spectrograms in dB.
* :func:`peak_dbfs`: sample peak in dBFS.
* :func:`loudness_error_lu`: integrated-loudness difference in LU (BS.1770-4).

The multi-resolution STFT distance is :class:`automaster.model.losses.MultiResolutionSTFTLoss`
(the training loss and the evaluation share one definition).
"""

from __future__ import annotations

import numpy as np
import torch

from automaster.dsp.loudness import integrated_loudness


def si_sdr(estimate: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray, eps: float = 1e-12) -> float:
    """SI-SDR of ``estimate`` against ``reference`` (same shape, any layout; flattened), in dB.

    The reference is scaled to best fit the estimate, so a gain change costs nothing; the
    remainder is distortion. Means are removed first (the zero-mean definition).
    """
    est = np.asarray(estimate, dtype=np.float64).reshape(-1)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if est.shape != ref.shape:
        raise ValueError(f"estimate and reference differ in size: {est.size} vs {ref.size}")
    est = est - est.mean()
    ref = ref - ref.mean()
    alpha = float(est @ ref) / (float(ref @ ref) + eps)
    target = alpha * ref
    noise = est - target
    return float(10.0 * np.log10((target @ target + eps) / (noise @ noise + eps)))


def mel_l1_db(a_db: torch.Tensor | np.ndarray, b_db: torch.Tensor | np.ndarray) -> float:
    """Mean |a - b| of two dB mel spectrograms, cropped to the shorter frame count."""
    a = np.asarray(a_db, dtype=np.float64)
    b = np.asarray(b_db, dtype=np.float64)
    n = min(a.shape[-1], b.shape[-1])
    return float(np.abs(a[..., :n] - b[..., :n]).mean())


def peak_dbfs(x: torch.Tensor | np.ndarray) -> float:
    """Sample peak of ``x`` in dBFS (-inf dB for silence is floored at -200)."""
    return float(20.0 * np.log10(max(float(np.abs(np.asarray(x)).max()), 1e-10)))


def loudness_error_lu(
    estimate: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray | None,
    sample_rate: int,
    reference_lufs: float | None = None,
) -> float:
    """``|LUFS(estimate) - LUFS(reference)|`` in LU (ITU-R BS.1770-4, ``(C, T)`` or ``(T,)``).

    ``reference_lufs``: the reference's loudness if already measured (then ``reference`` may be
    ``None``). ``nan`` when either is below the absolute gate (silence has no integrated loudness).
    """
    if reference_lufs is None and reference is None:
        raise ValueError("loudness_error_lu needs the reference or its reference_lufs")
    a = integrated_loudness(estimate, sample_rate)
    b = integrated_loudness(reference, sample_rate) if reference_lufs is None else float(reference_lufs)
    if not (np.isfinite(a) and np.isfinite(b)):
        return float("nan")
    return float(abs(a - b))
