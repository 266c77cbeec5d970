"""The mastering options ``master`` and ``evaluate`` share (a :class:`MasterConfig`), and the
model they use when none is given."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from automaster.cli.common import CHECKOUT, UsageError
from automaster.config import ConfigError, MasterConfig

MASTER_DEFAULTS = MasterConfig()  # the defaults the master and evaluate commands show and use


def add_repair_options(p: argparse.ArgumentParser, init_phase_help: str, levels_help: str) -> None:
    """The mastering options shared by ``master`` and ``evaluate`` (a MasterConfig)."""
    p.add_argument("--iterations", type=int, default=MASTER_DEFAULTS.iterations,
                   help=f"Griffin-Lim iterations (default {MASTER_DEFAULTS.iterations})")
    p.add_argument("--init-phase", action="store_true", help=init_phase_help)
    p.add_argument("--target-lufs", type=float, help=f"normalise integrated loudness to this (e.g. -14){levels_help}")
    p.add_argument("--true-peak", type=float, help=f"true-peak ceiling in dBTP (e.g. -1){levels_help}")
    p.add_argument("--no-echo-removal", dest="echo_removal", action="store_false",
                   help="skip the echo stage (default: measure the strongest echo from the audio's cepstrum and "
                   f"undo it when its gain is >= {MASTER_DEFAULTS.min_echo_gain:g}, before any inversion)")
    p.add_argument("--max-forecast-error", type=float, default=MASTER_DEFAULTS.max_forecast_error,
                   help="chain path: apply a forecast parameter only if its validation MAE is at most this share "
                   f"of the predict-the-mean baseline's (default {MASTER_DEFAULTS.max_forecast_error:g}; others stay "
                   "neutral); 'inf': apply every forecast")
    p.add_argument("--level-model", metavar="MODEL|none",
                   help="a level model (a folder with trees.npz, or a spectral checkpoint) that estimates the original "
                   "master's loudness for the restore preset when --model has none (default: models/level of the "
                   "checkout); 'none': keep the restored level")


def master_config(args: argparse.Namespace, **fields: Any) -> MasterConfig:
    """The MasterConfig of the parsed repair options (plus ``fields``)."""
    try:
        return MasterConfig(
            iterations=args.iterations, init_phase=args.init_phase, target_lufs=args.target_lufs,
            true_peak_dbtp=args.true_peak, echo_removal=args.echo_removal,
            max_forecast_error=args.max_forecast_error, level_model=level_model_or_shipped(args.level_model),
            max_eq_db=getattr(args, "max_eq_db", MASTER_DEFAULTS.max_eq_db), **fields,  # master has it, evaluate not
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def model_or_shipped(model: str | None) -> str:
    """``--model``, or the checkout's ``models/reference`` when it is not given."""
    if model is not None:
        return model
    shipped = CHECKOUT / "models" / "reference"
    if not shipped.exists():
        raise UsageError(f"no --model given and no shipped model at {shipped}; pass --model <checkpoint dir or model.pt>")
    return str(shipped)


def level_model_or_shipped(level_model: str | None) -> str | None:
    """``--level-model``: None for ``none``, the checkout's ``models/level`` when not given
    (None if the checkout has none), else the path, which must exist."""
    if level_model is None:
        shipped = CHECKOUT / "models" / "level"
        return str(shipped) if shipped.exists() else None
    if level_model.lower() == "none":
        return None
    if not Path(level_model).exists():
        raise UsageError(f"--level-model {level_model!r} does not exist; pass a level model's folder or 'none'")
    return level_model


def default_inversion(model: str) -> str:
    """The inversion the model renders by default (:func:`automaster.mastering.default_inversion`)."""
    from automaster.mastering import default_inversion as for_model

    return for_model(model)
