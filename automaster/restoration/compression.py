"""Compression undone: detect our compressor from the waveform, estimate its settings, invert it.

A :class:`CompressionModel` reads :func:`automaster.restoration.features.waveform_features` and
holds two small fits: a logistic detector (compressed by our compressor or not) and a ridge
estimator of the settings. When the detector fires, :meth:`CompressionModel.undo` drives the exact
inverse (:func:`automaster.effects.compressor.compressor_inverse`) with the estimates; otherwise the
audio is returned unchanged (the same array).

What the waveform can tell: makeup and the headroom gain after the compressor are one overall gain,
and a gain before a compressor is a shift of its threshold. So the estimated threshold is the
*effective* one, relative to the compressed clip's own RMS level (``threshold_rel_db``), and the
inverse runs with that threshold and no makeup: it returns the original up to one gain.

Examples (:func:`make_example`) are drawn as the project draws damage
(:func:`automaster.degrade.draw_params` seeded by ``(seed, key)``, :func:`automaster.degrade.only_effects`),
so a training example is what ``automaster evaluate --effects compressor`` would make of that crop.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from automaster.config import DegradeConfig
from automaster.degrade import clip_rms_db, degrade_clip, draw_params, make_generator, only_effects
from automaster.dsp.constants import HOP_LENGTH
from automaster.effects.compressor import compressor, compressor_inverse
from automaster.effects.params import BY_NAME
from automaster.restoration.features import N_FEATURES, waveform_features

# Regression targets, in the units the fit uses (times and ratio on a log scale, as the table's).
TARGETS = ("threshold_rel_db", "log_ratio", "knee_db", "log_attack_ms", "log_release_ms")
# How an example is damaged, and how often: our compressor alone, or not compressed at all (clean,
# or another effect alone, so the detector learns that EQ or reverb is not compression).
KINDS = {"compressor": 0.5, "clean": 0.2, "eq": 0.1, "reverb": 0.1, "echo": 0.1}
PEAK = 0.999  # the evaluate job's clean peak before damage


@dataclass
class Example:
    """One damaged crop: its audio ``(1, T)``, features, kind and (if compressed) targets."""

    audio: np.ndarray
    features: np.ndarray
    kind: str
    targets: np.ndarray  # (len(TARGETS),), NaN when not compressed
    params: dict[str, float] = field(default_factory=dict)


def compressor_settings(params: dict[str, torch.Tensor]) -> dict[str, float]:
    """The compressor's settings of one clip's draw, by the compressor function's argument names."""
    names = ("threshold_db", "ratio", "knee_db", "attack_ms", "release_ms", "makeup_db")
    return {n: float(params[f"comp_{n}"].reshape(-1)[0]) for n in names}


def compress_clip(clean: np.ndarray, sample_rate: int, seed: int, key: str, config: DegradeConfig = DegradeConfig()) -> tuple[np.ndarray, dict[str, float]]:
    """``clean`` ``(C, T)`` through our compressor alone, as :func:`automaster.degrade.degrade_clip`
    with ``effects=("compressor",)`` damages it (the same draw and headroom gain), without the
    chain's neutral EQ/reverb/echo passes (ten times faster; equal to ~1e-5, see the tests).

    Returns:
        ``(audio (C, T), settings)``: settings as :func:`compressor_settings` plus ``output_gain_db``.
    """
    gen = make_generator(seed, key)
    params = only_effects(draw_params(1 + clean.shape[-1] // HOP_LENGTH, gen, config, clip_rms_db=clip_rms_db(clean)), ("compressor",))
    s = compressor_settings(params)
    with torch.no_grad():
        y = compressor(torch.from_numpy(np.ascontiguousarray(clean, dtype=np.float32))[None], sample_rate, **s)[0].numpy()
    peak = max(float(np.abs(y).max()), 1e-9)
    gain_db = min(0.0, 20.0 * math.log10(config.peak_ceiling / peak))
    if gain_db < BY_NAME["output_gain_db"].low:
        raise ValueError(f"degraded peak needs {gain_db:.1f} dB of headroom, beyond {BY_NAME['output_gain_db'].low} dB")
    return y * np.float32(10.0 ** (gain_db / 20.0)), {**s, "output_gain_db": gain_db}


def targets_of(settings: dict[str, float], compressed: np.ndarray) -> np.ndarray:
    """The regression targets (:data:`TARGETS`) of a compressed clip from its true settings."""
    effective = settings["threshold_db"] + settings["makeup_db"] + settings["output_gain_db"]
    return np.array([
        effective - clip_rms_db(compressed), math.log(settings["ratio"]), settings["knee_db"],
        math.log(settings["attack_ms"]), math.log(settings["release_ms"]),
    ], dtype=np.float32)


def draw_kind(seed: int, key: str) -> str:
    """Which damage an example gets, drawn from ``(seed, key)`` with :data:`KINDS`' weights."""
    u = float(torch.rand(1, generator=make_generator(seed, f"kind:{key}")))
    edges = np.cumsum(list(KINDS.values()))
    return list(KINDS)[int(np.searchsorted(edges, u * edges[-1], side="right").clip(max=len(KINDS) - 1))]


def make_example(clean: np.ndarray, sample_rate: int, seed: int, key: str, kind: str | None = None) -> Example:
    """Damage ``clean`` ``(C, T)`` (peak brought to :data:`PEAK`) by ``kind`` (None: :func:`draw_kind`)."""
    kind = kind or draw_kind(seed, key)
    clean = clean * np.float32(PEAK / max(float(np.abs(clean).max()), 1e-9))
    targets = np.full(len(TARGETS), np.nan, dtype=np.float32)
    settings: dict[str, float] = {}
    if kind == "compressor":
        audio, settings = compress_clip(clean, sample_rate, seed, key)
        targets = targets_of(settings, audio)
    elif kind == "clean":
        audio = clean
    else:
        audio = degrade_clip(clean, sample_rate, seed, key, effects=(kind,)).audio[0].numpy()
    return Example(audio, waveform_features(audio, sample_rate), kind, targets, settings)


# ----------------------------------------------------------------------------- the fits
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 50) -> np.ndarray:
    """Weights ``(D + 1,)`` (bias last) of an L2-penalised logistic regression, by Newton steps."""
    a = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    w = np.zeros(a.shape[1])
    reg = l2 * len(x) * np.eye(a.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        grad = a.T @ (p - y) + reg @ w
        hess = (a * (p * (1 - p))[:, None]).T @ a + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def fit_ridge(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Weights ``(D + 1, K)`` (bias last row) of ridge regression of ``y`` ``(N, K)`` on ``x``."""
    a = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    reg = l2 * np.eye(a.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(a.T @ a + reg, a.T @ y.astype(np.float64))


def expand(z: np.ndarray) -> np.ndarray:
    """Standardised features and their squares: the ridge and logistic fits are then quadratic."""
    return np.hstack([z, z * z])


@dataclass
class CompressionModel:
    """Standardisation, detector and estimator weights, and the detector's decision threshold."""

    mean: np.ndarray  # (N_FEATURES,)
    scale: np.ndarray  # (N_FEATURES,)
    detector: np.ndarray  # (2 N_FEATURES + 1,)
    estimator: np.ndarray  # (2 N_FEATURES + 1, len(TARGETS))
    decision: float = 0.5  # detector probability above which the inverse runs
    shrink: float = 1.0  # share of the estimated log-ratio applied: under-expanding errs on the safe side
    card: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, features: np.ndarray, compressed: np.ndarray, targets: np.ndarray,
            l2_detector: float = 1e-3, l2_estimator: float = 10.0) -> "CompressionModel":
        """Fit on ``features`` ``(N, D)``, labels ``compressed`` ``(N,)`` and ``targets`` ``(N, K)``
        (rows that are not compressed are ignored by the estimator). Deterministic."""
        if features.shape[1] != N_FEATURES:
            raise ValueError(f"expected (N, {N_FEATURES}) features, got shape {features.shape}")
        mean = features.mean(axis=0)
        scale = features.std(axis=0) + 1e-6
        z = expand((features - mean) / scale)
        det = fit_logistic(z, compressed.astype(np.float64), l2_detector)
        est = fit_ridge(z[compressed], targets[compressed], l2_estimator)
        return cls(mean.astype(np.float32), scale.astype(np.float32), det.astype(np.float32), est.astype(np.float32))

    def _design(self, features: np.ndarray) -> np.ndarray:
        f = np.atleast_2d(np.asarray(features, dtype=np.float64))
        z = expand((f - self.mean) / self.scale)
        return np.hstack([z, np.ones((len(z), 1))])

    def probability(self, features: np.ndarray) -> np.ndarray:
        """Detector probability ``(N,)`` that each row was compressed by our compressor."""
        return 1.0 / (1.0 + np.exp(-np.clip(self._design(features) @ self.detector, -30, 30)))

    def estimate(self, features: np.ndarray) -> np.ndarray:
        """Estimated targets ``(N, len(TARGETS))`` (see :data:`TARGETS`)."""
        return self._design(features) @ self.estimator

    def settings(self, estimate: np.ndarray, compressed: np.ndarray) -> dict[str, float]:
        """Inverse settings for one clip from its estimated targets, clamped to the table's ranges."""
        def clamp(name: str, v: float) -> float:
            return float(np.clip(v, BY_NAME[name].low, BY_NAME[name].high))
        return {
            "threshold_db": float(estimate[0]) + clip_rms_db(compressed),
            "ratio": clamp("comp_ratio", math.exp(self.shrink * estimate[1])),
            "knee_db": clamp("comp_knee_db", float(estimate[2])),
            "attack_ms": clamp("comp_attack_ms", math.exp(estimate[3])),
            "release_ms": clamp("comp_release_ms", math.exp(estimate[4])),
            "makeup_db": 0.0,
        }

    def undo(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, dict]:
        """Invert our compressor on ``audio`` ``(C, T)`` when detected; otherwise return ``audio`` itself.

        Returns:
            ``(audio, report)``: the report has the detector probability, whether it fired and the
            settings used. The output is brought back to the input's RMS level (the inverse has no
            makeup to remove: see the module doc).
        """
        feats = waveform_features(audio, sample_rate)
        prob = float(self.probability(feats)[0])
        report: dict = {"probability": prob, "fired": prob >= self.decision}
        if not report["fired"]:
            return audio, report
        s = self.settings(self.estimate(feats)[0], audio)
        report["settings"] = s
        with torch.no_grad():
            out = compressor_inverse(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None], sample_rate, **s)[0].numpy()
        rms_in = math.sqrt(float(np.mean(np.square(audio, dtype=np.float64))) + 1e-30)
        rms_out = math.sqrt(float(np.mean(np.square(out, dtype=np.float64))) + 1e-30)
        return out * np.float32(rms_in / rms_out), report

    def save(self, folder: str) -> None:
        """Write ``weights.npz`` and ``card.json`` into ``folder``."""
        os.makedirs(folder, exist_ok=True)
        np.savez(os.path.join(folder, "weights.npz"), mean=self.mean, scale=self.scale,
                 detector=self.detector, estimator=self.estimator,
                 decision=np.float32(self.decision), shrink=np.float32(self.shrink))
        with open(os.path.join(folder, "card.json"), "w") as f:
            json.dump({"targets": list(TARGETS), "n_features": N_FEATURES, **self.card}, f, indent=2)

    @classmethod
    def load(cls, folder: str) -> "CompressionModel":
        """Read a model written by :meth:`save`.

        Raises:
            ValueError: the weights do not match this version's features.
        """
        path = os.path.join(folder, "weights.npz")
        with np.load(path) as w:
            model = cls(w["mean"], w["scale"], w["detector"], w["estimator"], float(w["decision"]), float(w["shrink"]))
        if model.mean.shape != (N_FEATURES,):
            raise ValueError(f"{path}: expected weights for {N_FEATURES} features, got {model.mean.shape}")
        card = os.path.join(folder, "card.json")
        if os.path.exists(card):
            with open(card) as f:
                model.card = json.load(f)
        return model
