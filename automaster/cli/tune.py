"""``automaster tune``: a Ray Tune search over the loss weights and learning rate."""

from __future__ import annotations

import argparse

from automaster.cli.common import EXIT_OK, UsageError, add_common, announce, check_tracking, demaster_output, job_options, location, overrides, plural
from automaster.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``automaster tune`` and its flags."""
    p = sub.add_parser("tune", help="Ray Tune search over the loss weights and learning rate (trials as MLflow child runs)")
    p.add_argument("--data", required=True, help="a `demaster --out` folder or URI")
    p.add_argument("--out", required=True, help="where Tune's state, trial checkpoints, best_config.json and model/ go")
    p.add_argument("--samples", type=int, help="trials (default 8)")
    p.add_argument("--epochs", type=int, help="epochs per trial, the most ASHA lets one run (default train.epochs)")
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (default 1)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``automaster tune``; returns the exit code (a user's mistake raises :class:`UsageError`)."""
    sets = overrides(args, "tune", ["samples", "epochs", "workers_per_trial"])
    config = load_config(args.config, sets + args.set)
    check_tracking(args.tracking_uri)
    data, out = demaster_output(args.data), location(args.out, flag="--out")
    from automaster.pipelines.tune import check_search, run_tune  # torch: after the checks above

    try:
        check_search(config)  # a bad setting: one line, before the announcement and Ray
        tc = config.tune
        announce("tune", f"{tc.samples} trials of up to {tc.epochs or config.train.epochs} epochs, "
                 f"{plural(tc.workers_per_trial, 'Ray Train worker')} each", out)
        summary = run_tune(data, out, config, **job_options(args, "automaster-tune"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(_summary_lines(summary))
    return EXIT_OK


def _summary_lines(summary: dict) -> str:
    """The end-of-search lines: best trial, early stopping, where the config, model and runs are."""
    params = ", ".join(f"{k}={v:.4g}" for k, v in summary["best_params"].items())
    return (
        f"tune: {summary['trials_run']} trials in {summary['wall_s']:.0f} s; best {summary['best_trial']} "
        f"({params}): {summary['monitor']} = {summary['best_metric']:.3f} at epoch {summary['best_epoch']}\n"
        f"  early stopping: {summary['trials_stopped_early']} trials stopped, {summary['epochs_run']} of "
        f"{summary['epochs_full']} epochs run ({100 * summary['compute_saved']:.0f}% compute saved); "
        f"{summary['trials_failed']} failed\n"
        f"  best config: {summary['best_config']}  (python jobs/train.py --config {summary['best_config']} ...)\n"
        f"  model:       {summary['model']}\n"
        f"  MLflow:      parent run {summary['mlflow_run_id']} at {summary['tracking_uri']}  (automaster compare --experiment {summary['experiment']})"
    )
