"""Checkpoints: a state dict in ``model.pt`` plus the full config in ``config.json``.

Layout of a checkpoint directory::

    model.pt      torch.save of a dict of plain values: {"format", "version", "model": state dict,
                  "epoch", "extra", and for resuming "optimizer", "scheduler"}
    config.json   Config.to_dict() (the whole config: the model is rebuilt from it)

Everything is read back with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists
and dicts only, never pickled objects. :func:`load_model` is the one loader that training,
mastering and evaluation share.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automaster.config import Config, ConfigError, from_dict
from automaster.model.cascade import Cascade
from automaster.model.spectral import MODE as SPECTRAL_MODE
from automaster.model.spectral import SpectralRestorer

FORMAT = "automaster-cascade"
VERSION = 1
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit its config."""


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(model.pt, config.json)`` of a checkpoint given its directory or its ``.pt`` file."""
    path = Path(path)
    if path.suffix == ".pt":
        return path, path.parent / CONFIG_FILE
    return path / MODEL_FILE, path / CONFIG_FILE


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """Only what ``weights_only=True`` loads back: numbers, strings, tensors, lists, dicts."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where}: key {key!r} is not a str or int")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise CheckpointError(f"{where}: {type(value).__name__} is not a plain value (tensor, number, str)")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    config: Config,
    extra: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    epoch: int | None = None,
) -> Path:
    """Write ``model.pt`` and ``config.json`` (atomically) to a directory or next to a ``.pt`` path.

    Args:
        path: checkpoint directory (created) or the ``.pt`` file's path.
        model: the :class:`Cascade` or :class:`SpectralRestorer` (DDP / compiled wrappers are unwrapped).
        config: the full config the model was built from.
        extra: plain values to keep (metrics, step, run id).
        optimizer, scheduler, epoch: training state for :func:`load_training_state`.

    Returns:
        The path of ``model.pt``.
    """
    if not isinstance(config, Config):
        raise TypeError(f"expected a Config, got {type(config).__name__}")
    bare = _unwrap(model)
    mode = getattr(bare, "mode", None)
    if mode is not None and mode != config.model.mode:
        raise CheckpointError(f"model mode {mode!r} does not match config.model.mode {config.model.mode!r}")
    model_path, config_path = checkpoint_paths(path)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: v.detach() for k, v in bare.state_dict().items()},
        "epoch": None if epoch is None else int(epoch),
        "extra": dict(extra or {}),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    _check_plain(payload, "checkpoint")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    _atomic_write(config_path, lambda p: p.write_text(text))
    _atomic_write(model_path, lambda p: torch.save(payload, p))
    return model_path


def load_failure(exc: BaseException, path: Path) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, in one line and never blank.

    Torch's own message for a pickle with code in it advises re-running with
    ``weights_only=False``, which would run that code: its advice is left out, its finding kept."""
    import pickle

    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        found = found.removeprefix("WeightsUnpickler error: ")
        return ("it holds pickled objects that are not plain data (tensors, numbers, strings)"
                + (f" ({found.rstrip('.')})" if found else "") + "; refused without running them")
    if isinstance(exc, EOFError) or (path.is_file() and path.stat().st_size == 0):
        return "the file is empty or cut short (an interrupted copy or download?)"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else f"{type(exc).__name__} (the file is damaged or not a checkpoint)"


def _read_payload(path: str | os.PathLike, map_location: Any) -> tuple[dict[str, Any], Path, Path]:
    model_path, config_path = checkpoint_paths(path)
    if not model_path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: {model_path} does not exist")
    try:
        payload = torch.load(model_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load on foreign bytes raises many types (even IndexError)
        raise CheckpointError(f"{model_path} is not a readable checkpoint: {load_failure(exc, model_path)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise CheckpointError(f"{model_path} is not an automaster checkpoint (no {FORMAT!r} model state)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{model_path}: checkpoint version {payload['version']} is newer than {VERSION}")
    return payload, model_path, config_path


def _read_config(config_path: Path) -> Config:
    if not config_path.is_file():
        raise CheckpointError(f"checkpoint config {config_path} does not exist")
    try:
        return from_dict(json.loads(config_path.read_text()))
    except (OSError, json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"cannot read checkpoint config {config_path}: {exc}") from None


def build_model(config: Config) -> Cascade | SpectralRestorer:
    """The untrained model of ``config.model.mode``: the spectral restorer or the cascade."""
    if config.model.mode == SPECTRAL_MODE:
        return SpectralRestorer.from_config(config)
    return Cascade.from_config(config)


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Cascade | SpectralRestorer, Config, dict[str, Any]]:
    """Rebuild the model from ``config.json`` and load ``model.pt`` into it (``weights_only``).

    Args:
        path: checkpoint directory or its ``model.pt``.
        map_location: device of the loaded weights (and the returned model).

    Returns:
        ``(model in eval mode, config, meta)``; ``meta`` has ``path``, ``epoch``, ``extra`` and
        ``has_training_state``.
    """
    payload, model_path, config_path = _read_payload(path, map_location)
    config = _read_config(config_path)
    try:
        model = build_model(config)
    except ValueError as exc:
        raise CheckpointError(f"{config_path}: cannot build the model: {exc}") from None
    state = payload["model"]
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{model_path} does not fit the model of {config_path}: {exc}") from None
    model.to(map_location).eval()
    meta = {
        "path": str(model_path),
        "epoch": payload.get("epoch"),
        "extra": payload.get("extra", {}),
        "has_training_state": "optimizer" in payload,
    }
    return model, config, meta


_CACHE: dict[tuple[str, int, int, str], tuple[Cascade, Config, dict[str, Any]]] = {}
_CACHE_SIZE = 4


def load_model_cached(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Cascade, Config, dict[str, Any]]:
    """:func:`load_model` once per process: the same checkpoint (resolved path and modification
    times of its files) on the same device returns the same objects. For inference only: callers
    must not train or modify the shared model.
    """
    model_path, config_path = checkpoint_paths(path)
    try:
        key = (
            str(model_path.resolve()), model_path.stat().st_mtime_ns, config_path.stat().st_mtime_ns,
            str(torch.device(map_location)),
        )
    except OSError:
        return load_model(path, map_location)  # the loader reports what is missing
    if key not in _CACHE:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = load_model(path, map_location)
    return _CACHE[key]


def load_training_state(
    path: str | os.PathLike,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore optimizer and scheduler state from a checkpoint (``weights_only``), for resuming.

    Returns:
        ``{"epoch": int | None, "extra": dict}``.
    """
    payload, model_path, _ = _read_payload(path, map_location)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is None:
            continue
        if name not in payload:
            raise CheckpointError(f"{model_path} holds no {name} state")
        try:
            obj.load_state_dict(payload[name])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{model_path}: {name} state does not fit: {exc}") from None
    return {"epoch": payload.get("epoch"), "extra": payload.get("extra", {})}


def strip_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a checkpoint without its optimiser and scheduler state (what ships or deploys).

    Keeps the weights, the config, the epoch and ``extra`` (metrics, history). Returns the
    path of the new ``model.pt``.
    """
    model, config, meta = load_model(src)
    return save_checkpoint(dst, model, config, extra=meta["extra"], epoch=meta["epoch"])


if __name__ == "__main__":  # python -m automaster.model.checkpoint strip SRC DST
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "strip":
        sys.exit("usage: python -m automaster.model.checkpoint strip SRC_CHECKPOINT DST_DIR")
    out = strip_checkpoint(sys.argv[2], sys.argv[3])
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")
