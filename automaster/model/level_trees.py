"""The level model: boosted regression trees over statistics of the input (issue 21, item 3).

It predicts the gain in LU that brings a damaged clip to the loudness of its original master,
``LUFS(original) - LUFS(input)``, from what the input tells about its level and dynamics:

* the spectral restorer's level features (:func:`automaster.model.spectral.level_features`, 66:
  the mean and spread over frames of the log magnitude in 32 bands, RMS and peak in dBFS);
* the waveform statistics of :func:`automaster.restoration.features.waveform_features` (183:
  level quantiles and histograms at 5, 50 and 500 ms, per-band levels, rise and fall shapes),
  which tell a compressor's flattened envelope or a reverb's filled gaps from a master's own.

Both are read from the mono downmix at the model rate, as the Masterer hands it over. The trees
are fitted offline by :mod:`automaster.training.level` (scikit-learn's histogram gradient
boosting, absolute error) on many damaged crops of many songs; prediction needs only numpy.
They are stored as plain arrays in ``trees.npz`` (no pickle), read by :meth:`LevelTrees.load`.
The prediction is bounded softly at ``±max_level_db``, like the spectral head's.

The module is an ``nn.Module`` with the spectral restorer's calling convention for its level
(``model(wave, outputs=("level_db",))``), so :class:`automaster.mastering.Masterer` takes either.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from automaster.dsp.constants import MODEL_RATE
from automaster.model.spectral import level_features, mono_log_magnitude, stft_mono

MODE = "level-trees"
TREES_FILE = "trees.npz"
FORMAT_VERSION = 1
_NODE_FIELDS = ("feature", "threshold", "left", "right", "is_leaf", "value", "missing_left")


def is_trees_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a tree level model (a folder holding :data:`TREES_FILE`, or that file)."""
    p = Path(path)
    return p.name == TREES_FILE and p.is_file() or (p / TREES_FILE).is_file()


def trees_file(path: str | os.PathLike) -> Path:
    """The ``trees.npz`` of a tree level model given its folder or the file."""
    p = Path(path)
    return p if p.name == TREES_FILE else p / TREES_FILE


def level_model_file(path: str | os.PathLike) -> Path:
    """The file whose bytes are a level model's weights: ``trees.npz``, or a checkpoint's ``model.pt``."""
    from automaster.model.checkpoint import checkpoint_paths

    return trees_file(path) if is_trees_dir(path) else checkpoint_paths(path)[0]


def input_features(wave: torch.Tensor) -> np.ndarray:
    """The trees' features ``(B, 66 + 183)`` of audio ``(B, C, T)`` at the model rate (downmixed
    to mono first, as the Masterer does). A clip shorter than the waveform statistics' one second
    is read repeated to a second."""
    from automaster.restoration.features import MIN_SECONDS, waveform_features

    wave = wave.detach().float().cpu()
    mono = wave.mean(dim=1, keepdim=True)  # (B, 1, T)
    with torch.no_grad():
        _, spec = stft_mono(mono)
        spectral = level_features(mono_log_magnitude(spec), mono).numpy()
    need = int(math.ceil(MIN_SECONDS * MODEL_RATE))
    stats = []
    for item in mono[:, 0].numpy():
        if item.shape[-1] < need:
            item = np.resize(item, need)
        stats.append(waveform_features(item, MODEL_RATE))
    return np.hstack([spectral, np.stack(stats)]).astype(np.float64)


class LevelTrees(nn.Module):
    """Boosted regression trees ``features -> LU`` (see the module doc); no trainable parameters."""

    mode = MODE

    def __init__(self, nodes: dict[str, np.ndarray], roots: np.ndarray, baseline: float, n_features: int,
                 max_level_db: float = 24.0, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        missing = [k for k in _NODE_FIELDS if k not in nodes]
        if missing:
            raise ValueError(f"tree arrays missing: {', '.join(missing)}")
        n = len(nodes["value"])
        if any(len(nodes[k]) != n for k in _NODE_FIELDS) or not len(roots) or roots.max() >= n:
            raise ValueError("tree arrays of unequal lengths or roots outside them")
        self.nodes = {k: np.asarray(nodes[k]) for k in _NODE_FIELDS}
        self.roots = np.asarray(roots, np.int64)
        self.baseline = float(baseline)
        self.n_features = int(n_features)
        self.max_level_db = float(max_level_db)
        self.meta = dict(meta or {})
        depth, frontier = 0, self.roots.copy()  # the deepest path bounds the walk's steps
        while not self.nodes["is_leaf"][frontier].all():
            inner = frontier[~self.nodes["is_leaf"][frontier]]
            frontier = np.concatenate([self.nodes["left"][inner], self.nodes["right"][inner]])
            depth += 1
        self.depth = depth

    # ------------------------------------------------------------------ building and storing
    @classmethod
    def from_sklearn(cls, estimator: Any, n_features: int, max_level_db: float = 24.0, meta: dict[str, Any] | None = None) -> "LevelTrees":
        """From a fitted ``sklearn.ensemble.HistGradientBoostingRegressor`` (numeric features)."""
        parts, roots, offset = [], [], 0
        for (predictor,) in estimator._predictors:
            t = predictor.nodes
            if np.any(t["is_categorical"]):
                raise ValueError("categorical splits are not supported")
            parts.append({
                "feature": t["feature_idx"].astype(np.int32), "threshold": t["num_threshold"].astype(np.float64),
                "left": t["left"].astype(np.int64) + offset, "right": t["right"].astype(np.int64) + offset,
                "is_leaf": t["is_leaf"].astype(bool), "value": t["value"].astype(np.float64),
                "missing_left": t["missing_go_to_left"].astype(bool),
            })
            roots.append(offset)
            offset += len(t)
        nodes = {k: np.concatenate([p[k] for p in parts]) for k in _NODE_FIELDS}
        baseline = float(np.asarray(estimator._baseline_prediction).reshape(-1)[0])
        return cls(nodes, np.array(roots), baseline, n_features, max_level_db, meta)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``<folder>/trees.npz`` atomically; returns its path."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "format": FORMAT_VERSION, "mode": MODE, "baseline": self.baseline,
                "n_features": self.n_features, "max_level_db": self.max_level_db}
        tmp = out / f".{TREES_FILE}.tmp.npz"
        np.savez_compressed(tmp, roots=self.roots, meta=np.array(json.dumps(meta)), **self.nodes)
        os.replace(tmp, out / TREES_FILE)
        return out / TREES_FILE

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LevelTrees":
        """Read a tree level model (its folder or ``trees.npz``).

        Raises:
            OSError: the file is missing or unreadable.
            ValueError: it is not a tree level model of this format.
        """
        file = trees_file(path)
        try:
            with np.load(file, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                nodes = {k: z[k] for k in _NODE_FIELDS}
                roots = z["roots"]
        except (KeyError, json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"{file} is not a tree level model ({exc})") from None
        if meta.get("mode") != MODE or meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{file} is not a tree level model of format {FORMAT_VERSION}")
        extra = {k: v for k, v in meta.items() if k not in ("format", "mode", "baseline", "n_features", "max_level_db")}
        return cls(nodes, roots, meta["baseline"], meta["n_features"], meta["max_level_db"], extra)

    # ------------------------------------------------------------------ predicting
    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """The raw sum of the trees (LU) for features ``(N, n_features)``, unbounded."""
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected features (N, {self.n_features}), got shape {x.shape}")
        nd = self.nodes
        rows = np.arange(len(x))[:, None]
        idx = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()  # (N, trees)
        for _ in range(self.depth):
            leaf = nd["is_leaf"][idx]
            if leaf.all():
                break
            v = x[rows, nd["feature"][idx]]
            go_left = np.where(np.isnan(v), nd["missing_left"][idx], v <= nd["threshold"][idx])
            idx = np.where(leaf, idx, np.where(go_left, nd["left"][idx], nd["right"][idx]))
        return self.baseline + nd["value"][idx].sum(axis=1)

    def level_from_features(self, x: np.ndarray) -> np.ndarray:
        """The bounded level gain (dB) for features ``(N, n_features)``."""
        return self.max_level_db * np.tanh(self.predict_features(x) / self.max_level_db)

    def forward(self, wave: torch.Tensor, outputs: tuple[str, ...] | None = ("level_db",)) -> dict[str, torch.Tensor]:
        """``{"level_db": (B,)}`` for audio ``(B, C, T)`` at the model rate."""
        if wave.dim() != 3:
            raise ValueError(f"expected (B, C, T) audio, got shape {tuple(wave.shape)}")
        if outputs is not None and tuple(outputs) != ("level_db",):
            raise ValueError(f"a tree level model gives only level_db, not {outputs}")
        level = self.level_from_features(input_features(wave))
        return {"level_db": torch.from_numpy(level.astype(np.float32)).to(wave.device)}


__all__ = ["MODE", "TREES_FILE", "LevelTrees", "input_features", "is_trees_dir", "level_model_file", "trees_file"]
