"""Losses: mel L1, parameter Huber, multi-resolution STFT, multi-scale mel, and their composite.

Each loss is a small ``nn.Module`` with ``forward(input, target)`` (auraloss style).
:class:`CompositeLoss` weighs them by :class:`~automaster.config.LossConfig` and returns its named
terms, keyed like the config and the logged metrics (``mel_l1`` -> ``train/mel_l1``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from automaster.config import LossConfig
from automaster.dsp.scale import DB_MAX, DB_MIN
from automaster.effects.params import N_PARAMS, PARAM_NAMES

TERMS = ("mel_l1", "params", "perceptual")


def _check_same_shape(input: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if input.shape != target.shape:
        raise ValueError(f"{what}: input shape {tuple(input.shape)} != target shape {tuple(target.shape)}")


def mel_l1_db(input: torch.Tensor, target: torch.Tensor, db_range: float = DB_MAX - DB_MIN) -> torch.Tensor:
    """Mean absolute error in dB of two normalised mels (the ``val/mel_l1_db`` metric).

    ``db_range`` is the span of the fixed normalisation (``db_max - db_min``, 100 dB by default).
    """
    _check_same_shape(input, target, "mel_l1_db")
    return (input - target).abs().mean() * db_range


class MelL1(nn.Module):
    """L1 distance of normalised mels.

    Shape:
        - input: ``(B, 1, M, F)`` (any shape) in [0, 1].
        - target: same as input.
        - output: scalar.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_same_shape(input, target, "MelL1")
        return F.l1_loss(input, target)


class ParamLoss(nn.Module):
    """Huber loss of normalised parameter trajectories against the real targets.

    Args:
        delta: Huber threshold in normalised units (quadratic below, linear above).
        weights: optional per-parameter weights ``(P,)`` (a sequence, a tensor, or a dict
            ``name -> weight`` with 1 for the names left out); normalised to mean 1, so the loss
            scale does not depend on them.

    Shape:
        - input: ``(B, P, F)`` predictions in [0, 1].
        - target: ``(B, P, F)`` targets in [0, 1] (per-clip parameters repeated over frames).
        - output: scalar.
    """

    def __init__(
        self, delta: float = 0.1, weights: Sequence[float] | torch.Tensor | dict[str, float] | None = None
    ) -> None:
        super().__init__()
        if delta <= 0:
            raise ValueError(f"huber_delta must be > 0, got {delta}")
        self.delta = float(delta)
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - set(PARAM_NAMES))
            if unknown:
                raise ValueError(f"unknown parameter name(s) in weights: {', '.join(unknown)}")
            weights = [float(weights.get(name, 1.0)) for name in PARAM_NAMES]
        w = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float32).flatten()
            if w.numel() != N_PARAMS or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"expected {N_PARAMS} non-negative parameter weights, got {w.tolist()}")
            w = w * (N_PARAMS / w.sum())
        self.register_buffer("weights", w, persistent=False)  # None: uniform

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_same_shape(input, target, "ParamLoss")
        if input.dim() != 3:
            raise ValueError(f"ParamLoss: expected (B, P, F) parameters, got shape {tuple(input.shape)}")
        per_elem = F.huber_loss(input, target.to(input.dtype), delta=self.delta, reduction="none")
        if self.weights is None:
            return per_elem.mean()
        if input.shape[1] != self.weights.numel():
            raise ValueError(f"ParamLoss: {self.weights.numel()} weights for {input.shape[1]} parameters")
        return (per_elem * self.weights.to(input).view(1, -1, 1)).mean()


class STFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1 at one resolution (Hann window).

    Shape:
        - input: ``(B, C, T)`` waveform.
        - target: same as input.
        - output: scalar (0 for identical signals).
    """

    def __init__(self, fft_size: int = 1024, hop_size: int | None = None, eps: float = 1e-7) -> None:
        super().__init__()
        self.fft_size = fft_size
        self.hop_size = hop_size or fft_size // 4
        self.eps = eps
        self.register_buffer("window", torch.hann_window(fft_size), persistent=False)

    def _magnitude(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (B * C, T)
        spec = torch.stft(
            flat,
            self.fft_size,
            self.hop_size,
            window=self.window.to(flat),
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        return spec.abs()  # (B * C, K, frames)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_same_shape(input, target, "STFTLoss")
        mag_in, mag_tg = self._magnitude(input), self._magnitude(target)
        diff = torch.linalg.vector_norm(mag_tg - mag_in, dim=(-2, -1))
        ref = torch.linalg.vector_norm(mag_tg, dim=(-2, -1)).clamp_min(self.eps)
        convergence = (diff / ref).mean()
        log_mag = F.l1_loss(torch.log(mag_in.clamp_min(self.eps)), torch.log(mag_tg.clamp_min(self.eps)))
        return convergence + log_mag


class MultiResolutionSTFTLoss(nn.Module):
    """Mean of :class:`STFTLoss` over several FFT sizes (hop = size / 4).

    Shape:
        - input: ``(B, C, T)`` waveform.
        - target: same as input.
        - output: scalar, 0 for identical signals, growing with their difference.
    """

    def __init__(self, fft_sizes: Sequence[int] = (512, 1024, 2048), eps: float = 1e-7) -> None:
        super().__init__()
        self.losses = nn.ModuleList(STFTLoss(n, eps=eps) for n in fft_sizes)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() != 3:
            raise ValueError(f"expected (B, C, T) audio, got shape {tuple(input.shape)}")
        return sum(loss(input, target) for loss in self.losses) / len(self.losses)


class MelMultiScaleLoss(nn.Module):
    """Perceptual-ish loss on normalised mels when no waveform is at hand.

    L1 of the mels average-pooled over time at several scales (``scales`` frames: fine detail
    and slow level/envelope both count), plus spectral convergence of the mels as linear
    magnitudes (``10 ** (dB / 20)``; scale invariant, so the unknown dB offset of the
    normalisation cancels and only ``db_range`` matters). Spectral convergence weighs the loud
    bins, the L1 terms weigh every bin alike in dB.

    Shape:
        - input: ``(B, 1, M, F)`` normalised mel in [0, 1].
        - target: same as input.
        - output: scalar, 0 for identical mels.
    """

    def __init__(
        self, scales: Sequence[int] = (1, 4, 16), db_range: float = DB_MAX - DB_MIN, eps: float = 1e-7
    ) -> None:
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        self.db_range = float(db_range)
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_same_shape(input, target, "MelMultiScaleLoss")
        if input.dim() != 4:
            raise ValueError(f"expected (B, 1, M, F) mel, got shape {tuple(input.shape)}")
        n_frames = input.shape[-1]
        l1 = 0.0
        for s in self.scales:
            k = min(s, n_frames)
            # ceil_mode: a ragged tail still counts (as a shorter window).
            pool_in = F.avg_pool2d(input, (1, k), ceil_mode=True)
            pool_tg = F.avg_pool2d(target, (1, k), ceil_mode=True)
            l1 = l1 + F.l1_loss(pool_in, pool_tg)
        l1 = l1 / len(self.scales)
        # Linear magnitudes relative to the target's loudest bin per item (cancels in the ratio).
        scale = self.db_range * math.log(10.0) / 20.0
        peak = target.detach().flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        mag_in = torch.exp((input - peak) * scale)
        mag_tg = torch.exp((target - peak) * scale)
        diff = torch.linalg.vector_norm((mag_tg - mag_in).flatten(1), dim=1)
        ref = torch.linalg.vector_norm(mag_tg.flatten(1), dim=1).clamp_min(self.eps)
        return l1 + (diff / ref).mean()


def weighted_terms(
    weights: dict[str, float], log_zero_terms: bool, term: Callable[[str], torch.Tensor | None]
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """``sum(weight * term(name))`` over ``weights`` (in their order) and the terms by name.

    ``term`` returns ``None`` where a term does not apply (left out). A zero-weight term is still
    computed, without gradient, for logging, unless ``log_zero_terms`` is false. The total is
    ``None`` when no weighted term applies.
    """
    terms: dict[str, torch.Tensor] = {}
    total = None
    for name, weight in weights.items():
        if weight == 0.0 and not log_zero_terms:
            continue
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0.0):
            value = term(name)
        if value is None:
            continue
        terms[name] = value
        if weight != 0.0:
            total = weight * value if total is None else total + weight * value
    return total, terms


class CompositeLoss(nn.Module):
    """``λ1 · mel_l1 + λ2 · params + λ3 · perceptual`` with the λs from :class:`LossConfig`.

    Which terms apply follows the model's outputs (its mode):

    * ``mel_l1``: when ``outputs`` has ``"mel"`` (restore, cascade);
    * ``params``: when ``outputs`` has ``"params"`` (params, cascade);
    * ``perceptual``: with parameters and waveforms in the batch (``wave_degraded``,
      ``wave_original``, ``sample_rate``): multi-resolution STFT of the inverse chain's repair of
      ``wave_degraded`` against ``wave_original``; otherwise, with a restored mel, the multi-scale
      mel loss; otherwise (params mode without waveforms) it does not apply.

    Terms that do not apply are left out of the returned dict (never zero-filled). A term whose
    λ is 0 is still computed and returned (for logging), without gradient, unless
    ``config.log_zero_terms`` is false.

    Args:
        config: the λs and the Huber delta.
        param_weights: optional per-parameter weights for :class:`ParamLoss`.
        db_range: dB span of the mel normalisation.
        fft_sizes: resolutions of the waveform loss.
    """

    def __init__(
        self,
        config: LossConfig | None = None,
        param_weights: Sequence[float] | dict[str, float] | None = None,
        db_range: float = DB_MAX - DB_MIN,
        fft_sizes: Sequence[int] = (512, 1024, 2048),
    ) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self.weights = {name: float(getattr(self.config, name)) for name in TERMS}
        self.mel_l1 = MelL1()
        self.params = ParamLoss(self.config.huber_delta, param_weights)
        self.mr_stft = MultiResolutionSTFTLoss(fft_sizes)
        self.mel_multiscale = MelMultiScaleLoss(db_range=db_range)

    @staticmethod
    def _sample_rate(value) -> int:
        rates = torch.as_tensor(value).flatten().unique()
        if rates.numel() != 1:
            raise ValueError(f"batch mixes sample rates {rates.tolist()}; expected one")
        return int(rates.item())

    def _perceptual(self, outputs: dict, batch: dict) -> torch.Tensor | None:
        has_waves = all(k in batch for k in ("wave_degraded", "wave_original", "sample_rate"))
        if "params" in outputs and has_waves:
            from automaster.model.cascade import restore_waveform

            params_norm = outputs["params"]
            degraded = batch["wave_degraded"].to(params_norm)
            restored = restore_waveform(degraded, self._sample_rate(batch["sample_rate"]), params_norm)
            return self.mr_stft(restored, batch["wave_original"].to(restored))
        if "mel" in outputs:
            return self.mel_multiscale(outputs["mel"], batch["mel_original"].to(outputs["mel"]))
        return None

    def _term(self, name: str, outputs: dict, batch: dict) -> torch.Tensor | None:
        """One term's value, or ``None`` where it does not apply to these outputs."""
        if name == "mel_l1":
            if "mel" not in outputs:
                return None
            return self.mel_l1(outputs["mel"], batch["mel_original"].to(outputs["mel"]))
        if name == "params":
            if "params" not in outputs:
                return None
            return self.params(outputs["params"], batch["params"].to(outputs["params"]))
        return self._perceptual(outputs, batch)

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns ``(total, terms)``; ``terms`` maps ``mel_l1``/``params``/``perceptual`` to scalars."""
        total, terms = weighted_terms(self.weights, self.config.log_zero_terms, lambda name: self._term(name, outputs, batch))
        if not terms:
            raise ValueError(f"no loss term applies to outputs with keys {sorted(outputs)}")
        if total is None:  # every applicable λ is 0: a constant, nothing to train
            total = torch.zeros((), device=next(iter(terms.values())).device)
        return total, terms
