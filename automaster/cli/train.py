"""``automaster train``: the U-Net + LSTM cascade on a demastered dataset, with Ray Train."""

from __future__ import annotations

import argparse

from automaster.cli.common import EXIT_OK, UsageError, add_common, announce, check_tracking, demaster_output, job_options, location, overrides, plural
from automaster.config import Config, load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``automaster train`` and its flags."""
    p = sub.add_parser("train", help="train the U-Net + LSTM cascade on a demastered dataset with Ray Train")
    p.add_argument("--data", required=True, help="a `demaster --out` folder or URI")
    p.add_argument("--out", required=True, help="where checkpoints, Ray results and the final model/ go")
    p.add_argument("--workers", type=int, help="Ray Train workers (default 1)")
    p.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker")
    p.add_argument("--epochs", type=int, help="epochs (default 10)")
    p.add_argument("--mode", choices=["restore", "params", "cascade"], help="model mode (default cascade)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``automaster train``; returns the exit code (a user's mistake raises :class:`UsageError`)."""
    sets = overrides(args, "train", ["workers", "epochs"])
    if args.gpu:
        sets.append("train.use_gpu=true")
    if args.mode:
        sets.append(f"model.mode={args.mode}")
    config = load_config(args.config, sets + args.set)
    check_tracking(args.tracking_uri)
    data, out = demaster_output(args.data), location(args.out, flag="--out")
    from automaster.pipelines.train import latest_checkpoint, run_train  # torch: after the checks above
    from automaster.training.loop import checkpoint_conflict

    if conflict := checkpoint_conflict(config, latest_checkpoint(out, args.run_name)):
        raise UsageError(f"--run-name {args.run_name}: its checkpoint in {out} has other settings ({conflict}); "
                         "use another --run-name or the same settings")  # fmt: skip
    announce_training(config, out)
    summary = run_train(data, out, config, **job_options(args, "automaster-train"))
    best = summary["best_metrics"]
    print(
        f"train: {summary['run_name']} done in {summary['wall_s']:.0f} s; best {summary['monitor']} = "
        f"{best.get(summary['monitor'], float('nan')):.3f} (identity {best.get('val/mel_l1_db_identity', float('nan')):.3f})\n"
        f"  model:  {summary['model']}\n  MLflow: run {summary['mlflow_run_id']} at {summary['tracking_uri']}\n"
        f"  log:    {summary['log_file']}"
    )
    return EXIT_OK


def announce_training(config: Config, out: str) -> None:
    """One console line before a training run, which says nothing until it ends."""
    tc = config.train
    length = f"{tc.steps} steps" if tc.steps > 0 else f"{tc.epochs} epochs"
    announce("train", f"{length} on {plural(tc.workers, 'Ray Train worker')}", out)
