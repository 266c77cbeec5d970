"""The training loop: plain torch on one device, no Ray, no MLflow.

Linear and visible (nanoGPT style): a batch from the source, the model, the loss, AdamW, gradient
clipping, the schedule; every ``train.val_every`` steps (or every epoch) a validation, a
checkpoint (model, optimiser, scheduler, step, history, full config; the format of
:mod:`automaster.model.checkpoint`) in ``<out>/checkpoints/last`` and, when the monitored metric
improves, a copy in ``<out>/model``. A second run into the same ``out`` resumes from the last one.

Wrappers (Ray Train with DDP and MLflow, Ray Tune) reuse this loop through two hooks, marked
``# HOOK`` below: ``wrap_model`` (DDP) and a :class:`Reporter` called after each validation on
every rank (rank 0 gets the checkpoint directory). With ``torch.distributed`` initialised, the
training metrics are averaged and the validation totals summed over the ranks, each rank
validating its share of the rows.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from automaster.config import Config
from automaster.model.checkpoint import build_model, load_training_state, save_checkpoint
from automaster.model.spectral import MODE as SPECTRAL
from automaster.training.sources import Source

log = logging.getLogger(__name__)

LAST_DIR, MODEL_DIR, METRICS_FILE = "checkpoints/last", "model", "metrics.jsonl"
_LOG_EVERY = 25  # steps between progress lines


class Reporter:
    """Called by :func:`train` after every validation, on every rank (the default logs)."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, figure: dict | None) -> None:
        """``metrics`` of the validation just done; ``checkpoint_dir`` (rank 0 only) holds its checkpoint."""
        log.info("step %d: %s", metrics["step"], ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if "/" in k))


def monitor_metric(config: Config) -> str:
    """The loss-weight-independent validation metric that ranks checkpoints and drives the plateau
    schedule: MR-STFT for the spectral restorer, the forecast error ratio for ``params``, else the
    restored mel's L1."""
    if config.train.monitor != "auto":
        return config.train.monitor
    return {SPECTRAL: "val/mrstft", "params": "val/mae_ratio"}.get(config.model.mode, "val/mel_l1_db")


def total_steps(config: Config, source: Source) -> int:
    """``train.steps``, else ``train.epochs`` epochs of the source."""
    return config.train.steps if config.train.steps > 0 else config.train.epochs * source.steps_per_epoch


def make_loss(config: Config) -> nn.Module:
    """The loss of the model mode: waveform losses (spectral) or the thesis composite."""
    from automaster.model.losses import CompositeLoss
    from automaster.model.spectral import SpectralLoss

    if config.model.mode == SPECTRAL:
        return SpectralLoss(config.loss)
    return CompositeLoss(config.loss, db_range=config.audio.db_max - config.audio.db_min)


def make_schedule(config: Config, optimizer: torch.optim.Optimizer, steps: int):
    """``cosine``: linear warmup then cosine to ``lr * lr_min_factor`` (stepped every step);
    ``plateau``: ReduceLROnPlateau on the monitor (stepped every validation)."""
    tc = config.train
    if tc.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=tc.lr_factor, patience=tc.lr_patience)
    if tc.schedule != "cosine":
        raise ValueError(f"train.schedule must be 'plateau' or 'cosine', got {tc.schedule!r}")

    def factor(step: int) -> float:
        if step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        progress = min(1.0, (step - tc.warmup_steps) / max(1, steps - tc.warmup_steps))
        return tc.lr_min_factor + (1 - tc.lr_min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def model_inputs(model: nn.Module, config: Config, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The forward pass of either model family on a training batch."""
    if config.model.mode == SPECTRAL:
        return model(batch["wave_degraded"])
    return model(batch["mel_degraded"])


def _distributed() -> tuple[bool, Any]:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized(), dist


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    on, dist = _distributed()
    if not on or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def _sum_over_ranks(totals: dict[str, tuple[float, int]], keys: list[str]) -> dict[str, tuple[float, int]]:
    """Every rank's ``(sum, count)`` per metric of ``keys`` (the same list everywhere), added up."""
    on, dist = _distributed()
    if not on:
        return totals
    t = torch.tensor([totals.get(k, (0.0, 0)) for k in keys], dtype=torch.float64)  # (K, 2)
    dist.all_reduce(t)
    return {k: (total, int(n)) for k, (total, n) in zip(keys, t.tolist()) if n > 0}


def validation_keys(config: Config) -> list[str]:
    """The validation metrics of the model mode, in a fixed order (for the all-reduce)."""
    from automaster.effects.params import PARAMS

    if config.model.mode == SPECTRAL:
        base = ["val/mrstft", "val/si_sdr_db", "val/mel_l1_db"]
        keys = [k + s for k in base for s in ("", "_identity", "_oracle_gain")]
        return keys + ["val/level_error_db", "val/level_error_db_identity"]
    keys = ["val/mel_l1_db", "val/mel_l1_db_identity"]
    if config.model.mode != "restore":
        keys += ["val/mrstft", "val/mrstft_identity", "val/chain_mel_l1_db"]
        keys += [f"val/mae/{p.name}" for p in PARAMS] + [f"val/mae_baseline/{p.name}" for p in PARAMS]
    return keys


def validate(model: nn.Module, config: Config, source: Source, device: torch.device, rank: int = 0, world: int = 1):
    """Validation metrics over the source's rows (this rank's share, totals summed over ranks)."""
    from automaster.model.validate import metrics_from_totals, spectral_validation_totals, validation_totals

    mine = source.val_rows[rank::world]
    if config.model.mode == SPECTRAL:
        totals, figure = spectral_validation_totals(model, mine, config.audio, device)
    else:
        totals, figure = validation_totals(model, mine, config.audio, source.means, device)
    metrics = metrics_from_totals(_sum_over_ranks(totals, validation_keys(config)))
    return {k: v for k, v in metrics.items() if not math.isnan(v)}, figure


def _resume(path: Path, model: nn.Module, optimizer, scheduler, device) -> dict[str, Any]:
    state = torch.load(path / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    meta = load_training_state(path, optimizer, scheduler, map_location=device)
    extra = meta["extra"]
    return {"step": int(extra.get("step", 0)), "history": json.loads(extra.get("history", "[]")),
            "best": float(extra.get("best", math.inf))}  # fmt: skip


def train(
    config: Config,
    source: Source,
    out: str | Path,
    device: str | torch.device = "cpu",
    *,
    reporter: Reporter | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    resume_from: str | Path | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """Train ``config.model`` on ``source``; checkpoints under ``out`` (rank 0 writes).

    Args:
        resume_from: a checkpoint to continue from (default: ``<out>/checkpoints/last`` if any).
        wrap_model: e.g. DDP (Ray Train's ``prepare_model``); the bare model is checkpointed.

    Returns:
        ``{"step", "best", "monitor", "metrics" (last validation), "wall_s", "model" (best dir)}``.
    """
    tc = config.train
    device = torch.device(device)
    out = Path(out)
    torch.manual_seed(tc.seed + rank)
    model = build_model(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps = total_steps(config, source)
    scheduler = make_schedule(config, optimizer, steps)
    monitor, reporter = monitor_metric(config), reporter or Reporter()
    state = {"step": 0, "history": [], "best": math.inf}
    resume = Path(resume_from) if resume_from else out / LAST_DIR
    if (resume / "model.pt").is_file():
        state = _resume(resume, model, optimizer, scheduler, device)
        log.info("resuming from %s at step %d", resume, state["step"])
    bare = model
    model = wrap_model(model) if wrap_model else model  # HOOK: DDP
    loss_fn = make_loss(config).to(device)
    val_every = tc.val_every if tc.val_every > 0 else source.steps_per_epoch
    sums: dict[str, float] = {}
    n_sums, crops, t_window, t_start = 0, 0, time.perf_counter(), time.perf_counter()
    metrics: dict[str, float] = {}
    for step in range(state["step"], steps):
        model.train()
        batch = source.batch(step, rank, world, device)
        outputs = model_inputs(model, config, batch)
        total, terms = loss_fn(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        if tc.schedule == "cosine":
            scheduler.step()
        for name, value in {"loss": total, **terms}.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        n_sums, crops = n_sums + 1, crops + len(batch["wave_degraded"])
        if rank == 0 and (step + 1) % _LOG_EVERY == 0:
            log.info("step %d/%d: train/loss %.4g (mean since the last validation), %.2f crops/s", step + 1, steps,
                     sums["loss"] / n_sums, crops * world / max(time.perf_counter() - t_window, 1e-9))  # fmt: skip
        if (step + 1) % val_every and step + 1 != steps:
            continue
        elapsed = time.perf_counter() - t_window
        train_metrics = _mean_over_ranks({f"train/{k}": v / n_sums for k, v in sums.items()})
        val_metrics, figure = validate(bare, config, source, device, rank, world)
        if tc.schedule == "plateau":
            scheduler.step(val_metrics.get(monitor, float("nan")))
        metrics = {**train_metrics, **val_metrics, "step": step + 1, "epoch": step // source.steps_per_epoch,
                   "lr": optimizer.param_groups[0]["lr"], "perf/crops_per_s": crops * world / max(elapsed, 1e-9)}  # fmt: skip
        state["history"].append({k: v for k, v in metrics.items() if k.startswith(("train/", "val/")) or k == "step"})
        improved = val_metrics.get(monitor, math.inf) < state["best"]
        state["best"] = min(state["best"], val_metrics.get(monitor, math.inf))
        ckpt = _save(out, bare, config, optimizer, scheduler, metrics, state, monitor, improved) if rank == 0 else None
        reporter.report(metrics, ckpt, figure)  # HOOK: MLflow / Ray Train report
        sums, n_sums, crops, t_window = {}, 0, 0, time.perf_counter()
    return {"step": steps, "best": state["best"], "monitor": monitor, "metrics": metrics,
            "wall_s": time.perf_counter() - t_start, "model": str(out / MODEL_DIR)}  # fmt: skip


def _save(out: Path, model, config, optimizer, scheduler, metrics, state, monitor: str, improved: bool) -> Path:
    """The last checkpoint (with training state), a copy in ``<out>/model`` when it improved, and a
    line of ``metrics.jsonl``."""
    last = out / LAST_DIR
    extra = {"step": int(metrics["step"]), "history": json.dumps(state["history"]), "metrics": json.dumps(metrics),
             "monitor": monitor, "best": float(state["best"])}  # fmt: skip
    save_checkpoint(last, model, config, extra=extra, optimizer=optimizer, scheduler=scheduler, epoch=int(metrics["epoch"]))
    if improved or not (out / MODEL_DIR / "model.pt").is_file():
        best = out / MODEL_DIR
        best.mkdir(parents=True, exist_ok=True)
        for name in ("model.pt", "config.json"):
            shutil.copyfile(last / name, best / f".{name}.tmp")
            (best / f".{name}.tmp").replace(best / name)
    with open(out / METRICS_FILE, "a") as f:
        f.write(json.dumps({k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in metrics.items()}) + "\n")
    return last
