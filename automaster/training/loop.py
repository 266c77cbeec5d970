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

from automaster.config import Config, parse_effects
from automaster.model.checkpoint import build_model, load_training_state, save_checkpoint
from automaster.model.spectral import MODE as SPECTRAL
from automaster.training.sources import Source

log = logging.getLogger(__name__)

LAST_DIR, MODEL_DIR, METRICS_FILE = "checkpoints/last", "model", "metrics.jsonl"
_LOG_EVERY = 25  # steps between progress lines


class Reporter:
    """Called by :func:`train` after every validation, on every rank (the default logs)."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, figure: dict | None, history: list[dict]) -> None:
        """``metrics`` of the validation just done; ``checkpoint_dir`` (rank 0 only) holds its
        checkpoint; ``figure``: the first validation row's mels; ``history``: every validation's metrics."""
        log.info("step %d: %s", metrics["step"], ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if "/" in k))


def monitor_metric(config: Config) -> str:
    """The loss-weight-independent validation metric that ranks checkpoints and drives the plateau
    schedule: MR-STFT for the spectral restorer, the forecast error ratio for ``params``, else the
    restored mel's L1."""
    if config.train.monitor != "auto":
        return config.train.monitor
    return {SPECTRAL: "val/mrstft", "params": "val/mae_ratio"}.get(config.model.mode, "val/mel_l1_db")


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


def _all_reduce(values: list, dist: Any) -> list:
    """The sum over ranks of ``values`` (numbers, or rows of numbers) in float64, on the device
    the process group's backend reduces on (NCCL reduces CUDA tensors only; gloo CPU ones)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    on, dist = _distributed()
    if not on or not values:
        return values
    keys = sorted(values)
    summed = _all_reduce([values[k] for k in keys], dist)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, summed)}


def _agree_any(flag: bool) -> bool:
    """``flag`` on any rank (every rank must stop at the same step, or DDP's all-reduce hangs)."""
    distributed, dist = _distributed()
    if not distributed:
        return flag
    return _all_reduce([1.0 if flag else 0.0], dist)[0] > 0


def _sum_over_ranks(totals: dict[str, tuple[float, int]], keys: list[str]) -> dict[str, tuple[float, int]]:
    """Every rank's ``(sum, count)`` per metric of ``keys`` (the same list everywhere), added up."""
    on, dist = _distributed()
    if not on:
        return totals
    summed = _all_reduce([list(totals.get(k, (0.0, 0))) for k in keys], dist)  # (K, 2)
    return {k: (total, int(n)) for k, (total, n) in zip(keys, summed) if n > 0}


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

    mine = source.my_val_rows(rank, world)
    if config.model.mode == SPECTRAL:
        totals, figure = spectral_validation_totals(model, mine, config.audio, device)
    else:
        totals, figure = validation_totals(model, mine, config.audio, source.means, device)
    metrics = metrics_from_totals(_sum_over_ranks(totals, validation_keys(config)))
    return {k: v for k, v in metrics.items() if not math.isnan(v)}, figure


# What a resumed run must share with its checkpoint: the model and audio settings (or the weights
# do not load) and what the validation crops are and how they are damaged (or the best score
# so far was measured on other examples than the new ones).
_RESUME_SECTIONS = ("model", "audio")
_RESUME_TRAIN_KEYS = ("damage_effects", "damage_scale", "val_crops", "val_crop_seconds", "seed")


def resume_conflict(config: Config, out: str | Path) -> str:
    """``""`` when ``out`` has no checkpoint or one ``config`` can resume, else the first setting
    that differs, as ``"model.spectral_width = 0 in the checkpoint, 8 now"``."""
    return checkpoint_conflict(config, Path(out) / LAST_DIR)


def checkpoint_conflict(config: Config, checkpoint: str | Path | None) -> str:
    """:func:`resume_conflict` for one checkpoint folder (its ``config.json``; None: no conflict)."""
    if checkpoint is None:
        return ""
    path = Path(checkpoint) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""  # none (or unreadable: the resume itself reports it)
    now = json.loads(json.dumps(config.to_dict()))
    keys = [(s, k) for s in _RESUME_SECTIONS for k in now.get(s, {})] + [("train", k) for k in _RESUME_TRAIN_KEYS]
    for section, key in keys:
        if not isinstance(saved.get(section), dict) or key not in saved[section]:
            continue  # a key the checkpoint predates
        before, after = saved[section][key], now[section][key]
        if key == "damage_effects":  # "reverb,compressor" is "compressor,reverb"; "" is "all"
            try:
                before, after = parse_effects(str(before)), parse_effects(after)
            except ValueError:
                pass
        if before != after:
            return f"{section}.{key} = {saved[section][key]!r} in the checkpoint, {now[section][key]!r} now"
    return ""


def _resume(path: Path, model: nn.Module, optimizer, scheduler, device) -> dict[str, Any]:
    state = torch.load(path / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    meta = load_training_state(path, optimizer, scheduler, map_location=device)
    extra = meta["extra"]
    epoch, done = int(meta["epoch"] or 0), bool(extra.get("epoch_done", True))
    return {"step": int(extra.get("step", 0)), "history": json.loads(extra.get("history", "[]")),
            "best": float(extra.get("best", math.inf)), "epoch": epoch + 1 if done else epoch,
            "start": 0 if done else int(extra.get("epoch_step", 0))}  # fmt: skip


class _Window:
    """Training metrics and throughput since the last validation."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps, self.crops, self.t0 = 0, 0, time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], crops: int) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())
        self.steps, self.crops = self.steps + 1, self.crops + crops

    def crops_per_s(self, world: int) -> float:
        return self.crops * world / max(time.perf_counter() - self.t0, 1e-9)


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

    Runs ``train.steps`` steps (0: ``train.epochs`` epochs), validating every ``train.val_every``
    steps (0: at the end of every epoch).

    Args:
        resume_from: a checkpoint to continue from (default: ``<out>/checkpoints/last`` if any).
        wrap_model: e.g. DDP (Ray Train's ``prepare_model``); the bare model is checkpointed.

    Returns:
        ``{"step", "best", "monitor", "metrics" (last validation), "stopped" ("steps", "epochs" or
        "max_minutes"), "wall_s", "model" (best dir)}``.
    """
    tc = config.train
    device = torch.device(device)
    out = Path(out)
    torch.manual_seed(tc.seed + rank)
    model = build_model(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps = tc.steps if tc.steps > 0 else (tc.epochs * source.steps_per_epoch if source.steps_per_epoch else math.inf)
    scheduler = make_schedule(config, optimizer, steps if math.isfinite(steps) else 0)
    monitor, reporter = monitor_metric(config), reporter or Reporter()
    state = {"step": 0, "history": [], "best": math.inf, "epoch": 0, "start": 0}
    resume = Path(resume_from) if resume_from else out / LAST_DIR
    if (resume / "model.pt").is_file():
        state = _resume(resume, model, optimizer, scheduler, device)
        log.info("resuming from %s at step %d (epoch %d)", resume, state["step"], state["epoch"])
    bare = model
    model = wrap_model(model) if wrap_model else model  # HOOK: DDP
    loss_fn = make_loss(config).to(device)
    step, epoch, t_start, metrics = state["step"], state["epoch"], time.perf_counter(), {}
    stopped = "steps" if tc.steps > 0 else "epochs"  # what ended the run: its length, or train.max_minutes
    window = _Window()

    def checkpoint(epoch_step: int, epoch_done: bool) -> None:
        nonlocal window, metrics
        train_metrics = _mean_over_ranks({f"train/{k}": v / max(window.steps, 1) for k, v in window.sums.items()})
        val_metrics, figure = validate(bare, config, source, device, rank, world)
        if tc.schedule == "plateau":
            scheduler.step(val_metrics.get(monitor, float("nan")))
        metrics = {**train_metrics, **val_metrics, "step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                   "perf/crops_per_s": window.crops_per_s(world)}  # fmt: skip
        if device.type == "cuda":  # the peak since the run started, this rank's device
            metrics["perf/max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        state["history"].append({k: v for k, v in metrics.items() if k.startswith(("train/", "val/")) or k == "step"})
        improved = val_metrics.get(monitor, math.inf) < state["best"]
        state["best"] = min(state["best"], val_metrics.get(monitor, math.inf))
        position = {"step": step, "epoch": epoch, "epoch_step": epoch_step, "epoch_done": epoch_done}
        ckpt = _save(out, bare, config, optimizer, scheduler, metrics, state, position, monitor, improved) if rank == 0 else None
        reporter.report(metrics, ckpt, figure, state["history"])  # HOOK: MLflow / Ray Train report
        window = _Window()

    while step < steps and (tc.steps > 0 or epoch < tc.epochs):
        i = state["start"] if epoch == state["epoch"] else 0
        for batch in source.epoch_batches(epoch, rank, world, device, start=i):
            model.train()
            outputs = model_inputs(model, config, batch)
            total, terms = loss_fn(outputs, batch)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            if tc.schedule == "cosine":
                scheduler.step()
            window.add({"loss": total, **terms}, len(batch["wave_degraded"]))
            step, i = step + 1, i + 1
            if rank == 0 and step % _LOG_EVERY == 0:
                log.info("step %d: train/loss %.4g (mean since the last validation), %.2f crops/s",
                         step, window.sums["loss"] / window.steps, window.crops_per_s(world))  # fmt: skip
            timed_out = tc.max_minutes > 0 and _agree_any(time.perf_counter() - t_start >= 60.0 * tc.max_minutes)
            if tc.val_every > 0 and step % tc.val_every == 0 or step >= steps or timed_out:
                checkpoint(i, epoch_done=False)
            if timed_out:
                log.info("stopping at step %d: train.max_minutes (%g) reached", step, tc.max_minutes)
                steps, stopped = step, "max_minutes"
            if step >= steps:
                break
        if tc.val_every <= 0 and window.steps:
            checkpoint(i, epoch_done=True)
        epoch += 1
    return {"step": step, "best": state["best"], "monitor": monitor, "metrics": metrics, "stopped": stopped,
            "wall_s": time.perf_counter() - t_start, "model": str(out / MODEL_DIR)}  # fmt: skip


def _save(out: Path, model, config, optimizer, scheduler, metrics, state, position, monitor: str, improved: bool) -> Path:
    """The last checkpoint (with training state and the loop's ``position``), a copy in
    ``<out>/model`` when it improved, and a line of ``metrics.jsonl``."""
    last = out / LAST_DIR
    extra = {**position, "history": json.dumps(state["history"]), "metrics": json.dumps(metrics),
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
