"""``automaster evaluate``: how well a model undoes demastering, next to baselines."""

from __future__ import annotations

import argparse

from automaster.cli.common import (
    EXIT_FAILED, EXIT_OK, UsageError, add_batch_options, add_tracking, add_workers, check_workers, job_options,
    location, log, out_location, print_summary,
)
from automaster.cli.repair import add_repair_options, master_config, model_or_shipped
from automaster.config import DAMAGE_EFFECTS, DEGRADERS, INVERSIONS, ConfigError, EvalConfig, parse_effects

EVAL_DEFAULTS = EvalConfig()  # the defaults the command shows and uses


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``automaster evaluate`` and its flags."""
    p = sub.add_parser("evaluate", help="how well a model undoes demastering, next to baselines (Ray, MLflow)")
    p.add_argument("--model", help="checkpoint directory or model.pt (default: models/reference of the checkout)")
    p.add_argument("--clean", required=True, help="folder of clean masters (recursive) or an FMA root (its --split)")
    p.add_argument("--out", required=True, help="output folder or URI (metrics.json, metrics.csv, parameters.csv)")
    p.add_argument("--seed", type=int, default=EVAL_DEFAULTS.seed,
                   help=f"degradation seed, with each track id (default {EVAL_DEFAULTS.seed}; demaster's default is 0)")
    p.add_argument("--degrader", choices=DEGRADERS, help="who damages the clean clips: our chain (default) or "
                   "Spotify's pedalboard (another implementation)")
    p.add_argument("--degraded", help="folder of degraded files at the clean files' relative paths (instead of a degrader)")
    p.add_argument("--effects", help=f"comma-separated: damage with these of our degrader's effects alone "
                   f"({','.join(DAMAGE_EFFECTS)}; the others neutral, the same draw; default all)")
    p.add_argument("--inversions", help=f"comma-separated: {','.join(INVERSIONS)} (default: every one the model can do)")
    p.add_argument("--split", choices=["training", "validation", "test", "all"],
                   help="corpus split (default: test for an FMA root, every file for a plain folder)")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many files (0: all)")
    p.add_argument("--clip-seconds", type=float, default=EVAL_DEFAULTS.clip_seconds,
                   help=f"centred excerpt length in seconds (default {EVAL_DEFAULTS.clip_seconds:g})")
    p.add_argument("--mono", action="store_true", help="downmix to mono (default: keep the channels)")
    add_repair_options(p, "start Griffin-Lim (model and oracle) from the degraded input's phase", "; model inversions only")
    add_workers(p)
    add_batch_options(p)
    add_tracking(p, "MLflow experiment name (default automaster-evaluate)")
    p.set_defaults(func=run)


def _evaluation(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig of the parsed options."""
    inversions = tuple(i.strip() for i in args.inversions.split(",") if i.strip()) if args.inversions else ()
    try:
        effects = parse_effects(args.effects) if args.effects is not None else DAMAGE_EFFECTS
    except ValueError as exc:
        raise UsageError(f"--effects: {exc}") from None
    if args.degraded and effects != DAMAGE_EFFECTS:
        raise UsageError("--degraded gives the damaged files; --effects cannot be used with it")
    try:
        return EvalConfig(
            seed=args.seed, degrader=args.degrader or EVAL_DEFAULTS.degrader, inversions=inversions,
            clip_seconds=args.clip_seconds, mono=args.mono, effects=effects,
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Run ``automaster evaluate``; returns the exit code (a user's mistake raises :class:`UsageError`)."""
    from automaster.mastering import MasteringError
    from automaster.model.checkpoint import CheckpointError
    from automaster.pipelines.evaluate import format_table, run_evaluate
    from automaster.pipelines.master import check_levels

    if args.degraded and args.degrader:
        raise UsageError("--degraded gives the damaged files; --degrader cannot be used with it")
    model = model_or_shipped(args.model)
    evaluation = _evaluation(args)
    check_levels(args.target_lufs, args.true_peak)
    check_workers(args.workers)
    out = out_location(args.out)
    try:
        metrics = run_evaluate(
            location(model, must_exist=True, flag="--model"),
            location(args.clean, must_exist=True, flag="--clean"),
            out,
            evaluation=evaluation,
            mastering=master_config(args),
            degraded_dir=location(args.degraded, must_exist=True, flag="--degraded") if args.degraded else None,
            split=args.split,
            limit=args.limit,
            workers=args.workers,
            gpu=args.gpu,
            ray=args.ray,
            overwrite=args.overwrite,
            **job_options(args, "automaster-evaluate"),
        )
    except ConfigError:
        raise
    except (MasteringError, CheckpointError, FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(format_table(metrics))
    print_summary("evaluate", metrics["summary"], f"; metrics: {metrics['out']}/metrics.json, metrics.csv, parameters.csv")
    if metrics["config"]["n_ok"] == 0:
        log.error("no file could be evaluated")
        return EXIT_FAILED
    return EXIT_OK
