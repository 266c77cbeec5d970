"""The compressor detector/estimator as a small torch MLP: the Ray-free training core.

:class:`CompressionNet` reads the waveform statistics of a clip
(:func:`automaster.restoration.features.waveform_features`, a chosen feature set) and gives a
detector logit (compressed by our compressor or not) and the compressor's settings
(:data:`automaster.restoration.compression.TARGETS`). :func:`fit` is one visible loop (AdamW,
cosine schedule, BCE + L1 on standardised targets of the compressed rows) that runs alone, in a
Ray Train worker (``wrap_model`` = ``prepare_model``: DDP, each rank its share of every batch)
or in a Ray Tune trial; a ``reporter`` gets every epoch's metrics and the network.

The selection metric ``val/score`` is the issue's target: the mean over the threshold and the
ratio of the validation MAE divided by the MAE of predicting the training mean (lower is better;
1 is no skill). It does not depend on any searched setting. Deterministic for a seed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from automaster.restoration.compression import TARGETS, CompressionModel
from automaster.restoration.features import N_FEATURES, feature_index

MONITOR = "val/score"
SCORED = ("threshold_rel_db", "log_ratio")  # the targets of issue 21's "MAE <= 60% of the mean's"
MAX_FPR = 0.05  # the exported decision: at most this false-positive rate on validation


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """The network's and the fit's settings (what Tune searches: hidden, layers, lr, weight_decay, dropout, features)."""

    hidden: int = 32
    layers: int = 2
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 30
    batch_size: int = 512
    features: str = "all"  # "all" or groups of FEATURE_GROUPS joined by "+"
    estimator_weight: float = 1.0  # the L1 term's weight against the detector's BCE
    dropout: float = 0.0  # after every hidden layer: the examples come from few songs, which a network learns by heart
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetConfig":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown compressor settings {sorted(unknown)}")
        return cls(**data)

    def check(self) -> None:
        """``ValueError`` naming the first bad setting."""
        for name in ("hidden", "layers", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not self.weight_decay >= 0 or not self.estimator_weight >= 0:
            raise ValueError(f"lr must be > 0 and weight_decay, estimator_weight >= 0, got {self.lr}, {self.weight_decay}, {self.estimator_weight}")
        feature_index(self.features)


class CompressionNet(nn.Module):
    """Raw features ``(B, N_FEATURES)`` -> (detector logit ``(B,)``, settings ``(B, len(TARGETS))``
    in the units of :data:`TARGETS`). The standardisation is in its buffers."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        index = feature_index(config.features)
        self.register_buffer("index", torch.from_numpy(index).long())
        self.register_buffer("mean", torch.zeros(len(index)))
        self.register_buffer("scale", torch.ones(len(index)))
        self.register_buffer("target_mean", torch.zeros(len(TARGETS)))
        self.register_buffer("target_scale", torch.ones(len(TARGETS)))
        layers: list[nn.Module] = []
        width = len(index)
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden), nn.GELU()] + ([nn.Dropout(config.dropout)] if config.dropout > 0 else [])
            width = config.hidden
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1 + len(TARGETS))

    def standardise_from(self, data: dict[str, np.ndarray]) -> None:
        """Set the feature and target standardisation from a training set."""
        f = data["features"][:, self.index.numpy()].astype(np.float64)
        t = data["targets"][data["kinds"] == "compressor"].astype(np.float64)
        self.mean.copy_(torch.from_numpy(f.mean(axis=0)))
        self.scale.copy_(torch.from_numpy(f.std(axis=0) + 1e-6))
        if len(t):
            self.target_mean.copy_(torch.from_numpy(t.mean(axis=0)))
            self.target_scale.copy_(torch.from_numpy(t.std(axis=0) + 1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + K)``: the logit and the standardised settings (what the loss reads; through
        ``forward`` so that DDP sees the pass)."""
        z = (features[:, self.index] - self.mean) / self.scale  # (B, D)
        return self.head(self.trunk(z))

    def split(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s output -> (logit ``(B,)``, settings ``(B, K)`` in the units of :data:`TARGETS`)."""
        return raw[:, 0], raw[:, 1:] * self.target_scale + self.target_mean


def loss_terms(raw: torch.Tensor, label: torch.Tensor, target_z: torch.Tensor, estimator_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE of the detector plus ``estimator_weight`` x L1 of the standardised settings on compressed rows."""
    bce = nn.functional.binary_cross_entropy_with_logits(raw[:, 0], label)
    mask = label > 0.5
    l1 = (raw[mask, 1:] - target_z[mask]).abs().mean() if mask.any() else raw.sum() * 0.0
    return bce + estimator_weight * l1, {"bce": float(bce.detach()), "l1": float(l1.detach())}


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (the rank statistic); NaN with one class only."""
    pos = label.astype(bool)
    if pos.all() or not pos.any():
        return float("nan")
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def predict(net: CompressionNet, features: np.ndarray, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(detector probability ``(N,)``, settings ``(N, K)``) of raw feature rows."""
    net.eval()
    probs, ests = [], []
    with torch.no_grad():
        for i in range(0, len(features), batch):
            logit, est = net.split(net(torch.from_numpy(np.ascontiguousarray(features[i : i + batch], np.float32))))
            probs.append(torch.sigmoid(logit).numpy())
            ests.append(est.numpy())
    if not probs:
        return np.zeros(0, np.float32), np.zeros((0, len(TARGETS)), np.float32)
    return np.concatenate(probs), np.concatenate(ests)


def evaluate(net: CompressionNet, data: dict[str, np.ndarray], prefix: str = "val") -> dict[str, float]:
    """Detector AUC/accuracy and, per target, the MAE and its ratio to predicting the training mean
    (the net's ``target_mean``); ``<prefix>/score`` is the mean ratio over :data:`SCORED`."""
    label = data["kinds"] == "compressor"
    prob, est = predict(net, data["features"])
    out = {f"{prefix}/detector_auc": roc_auc(prob, label), f"{prefix}/detector_accuracy": float(((prob >= 0.5) == label).mean())}
    mean = net.target_mean.numpy()
    truth = data["targets"][label]
    for i, name in enumerate(TARGETS):
        mae = float(np.abs(est[label, i] - truth[:, i]).mean()) if label.any() else float("nan")
        base = float(np.abs(mean[i] - truth[:, i]).mean()) if label.any() else float("nan")
        out[f"{prefix}/mae/{name}"] = mae
        out[f"{prefix}/mae_ratio/{name}"] = mae / base if base > 0 else float("nan")
    out[f"{prefix}/score"] = float(np.mean([out[f"{prefix}/mae_ratio/{t}"] for t in SCORED]))
    return out


class Reporter(Protocol):
    def report(self, epoch: int, metrics: dict[str, float], net: CompressionNet) -> None: ...


def fit(
    config: NetConfig,
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    reporter: Reporter | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] = lambda m: m,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
) -> tuple[CompressionNet, list[dict[str, float]]]:
    """Train a :class:`CompressionNet` on ``train``, validating every epoch on ``val``.

    With ``world`` ranks each takes its share of every (globally shuffled) batch; the gradients
    are averaged by the wrapped model (DDP). Returns the network (on the CPU) and every epoch's metrics.
    """
    config.check()
    torch.manual_seed(config.seed)
    net = CompressionNet(config)
    net.standardise_from(train)
    model = wrap_model(net.to(device))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs, eta_min=config.lr * 0.02)
    x = torch.tensor(train["features"], dtype=torch.float32)  # a copy: arrays from Ray's object store are read-only
    label = torch.from_numpy((train["kinds"] == "compressor").astype(np.float32))
    tz = np.nan_to_num((train["targets"] - net.target_mean.numpy()) / net.target_scale.numpy())
    target_z = torch.from_numpy(tz.astype(np.float32))
    history = []
    for epoch in range(config.epochs):
        model.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(x))
        totals = {"loss": 0.0, "bce": 0.0, "l1": 0.0}
        batches = 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < world:
                continue  # a last batch too small to share: every rank skips it alike (DDP waits for all)
            mine = torch.from_numpy(batch[rank::world])  # this rank's share of the global batch
            raw = model(x[mine].to(device))
            loss, terms = loss_terms(raw, label[mine].to(device), target_z[mine].to(device), config.estimator_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            totals["loss"] += float(loss.detach())
            totals["bce"] += terms["bce"]
            totals["l1"] += terms["l1"]
            batches += 1
        sched.step()
        cpu_net = copy.deepcopy(_unwrapped(model)).to("cpu")  # a copy: DDP's own module stays where it is
        metrics = {"epoch": float(epoch), **{f"train/{k}": v / max(batches, 1) for k, v in totals.items()}, **evaluate(cpu_net, val)}
        history.append(metrics)
        if reporter is not None:
            reporter.report(epoch, metrics, cpu_net)
    return _unwrapped(model).to("cpu"), history


def _unwrapped(model: nn.Module) -> CompressionNet:
    return model.module if hasattr(model, "module") else model  # DDP keeps the network in .module


# ----------------------------------------------------------------------------- the product's model


def choose_decision(net: CompressionNet, val: dict[str, np.ndarray], max_fpr: float = MAX_FPR) -> float:
    """The lowest detector probability whose false-positive rate on ``val``'s uncompressed rows is at most ``max_fpr``."""
    prob, _ = predict(net, val["features"][val["kinds"] != "compressor"])
    if len(prob) == 0:
        return 0.5
    neg = np.sort(prob)[::-1]
    allowed = int(math.floor(max_fpr * len(neg)))
    return float(min(neg[allowed] + 1e-6, 1.0)) if allowed < len(neg) else 0.0


def save_net(folder: str | Path, net: CompressionNet, config: NetConfig, extra: dict[str, Any] | None = None) -> None:
    """``model.pt`` (the state dict) and ``config.json`` (settings, decision, figures) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({"kind": "compression-net", "n_features": N_FEATURES, "targets": list(TARGETS),
                                                    "net": config.to_dict(), **(extra or {})}, indent=1, sort_keys=True))  # fmt: skip


def load_net(folder: str | Path) -> tuple[CompressionNet, dict[str, Any]]:
    """The network and its ``config.json`` (loaded with ``weights_only=True``).

    Raises:
        ValueError: not a compression network of this version's features.
    """
    folder = Path(folder)
    meta = json.loads((folder / "config.json").read_text())
    if meta.get("kind") != "compression-net" or meta.get("n_features") != N_FEATURES:
        raise ValueError(f"{folder}: not a compression network for {N_FEATURES} features")
    net = CompressionNet(NetConfig.from_dict(meta["net"]))
    net.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    return net, meta


class NetCompressionModel(CompressionModel):
    """:class:`CompressionModel` (detector gate, settings, exact inverse) driven by a :class:`CompressionNet`."""

    def __init__(self, net: CompressionNet, decision: float = 0.5, shrink: float = 1.0, card: dict | None = None) -> None:
        empty = np.zeros(0, np.float32)
        super().__init__(empty, empty, empty, empty.reshape(0, len(TARGETS)), decision, shrink, card or {})
        self.net = net

    def probability(self, features: np.ndarray) -> np.ndarray:
        return predict(self.net, np.atleast_2d(features))[0].astype(np.float64)

    def estimate(self, features: np.ndarray) -> np.ndarray:
        return predict(self.net, np.atleast_2d(features))[1].astype(np.float64)

    @classmethod
    def load(cls, folder: str) -> "NetCompressionModel":
        net, meta = load_net(folder)
        return cls(net, float(meta.get("decision", 0.5)), float(meta.get("shrink", 1.0)), meta)
