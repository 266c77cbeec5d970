"""``automaster demo``: demaster the bundled music, train a small model on it and master the music
with it (local Ray, local MLflow)."""

from __future__ import annotations

import argparse
from pathlib import Path

from automaster.cli.common import CHECKOUT, EXIT_OK, UsageError, add_common
from automaster.cli.repair import default_inversion
from automaster.cli.train import announce_training
from automaster.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``automaster demo`` and its flags."""
    p = sub.add_parser("demo", help="demaster the bundled music, train a small model on it and master the music with it (local Ray, local MLflow)")
    p.add_argument("--out", default="results/demo", help="output folder (default results/demo)")
    p.add_argument("--epochs", type=int, default=2)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``automaster demo``; returns the exit code (a user's mistake raises :class:`UsageError`)."""
    from automaster.pipelines.demaster import run_demaster
    from automaster.pipelines.train import run_train

    music = CHECKOUT / "tests" / "data" / "music"
    if not music.is_dir():
        raise UsageError(f"the bundled music ({music}) is missing: run the demo from a checkout of automaster")
    out = Path(args.out).resolve()
    base = {"demaster": {"clip_seconds": 10.0, "variants": 3}, "train": {"epochs": args.epochs, "crop_frames": 128}}
    config = load_config(args.config, args.set, base=base)
    demaster = run_demaster(
        str(music), str(out / "paired"), config, tracking_uri=args.tracking_uri, ray_address=args.ray_address, verbose=args.verbose
    )
    print(f"demaster: {demaster['ok']} ok, {demaster['failed']} failed -> {out / 'paired'} (summary.json, output_audio/, output_spectrograms/)")
    announce_training(config, str(out / "train"))
    train = run_train(str(out / "paired"), str(out / "train"), config, tracking_uri=args.tracking_uri, ray_address=args.ray_address,
                      run_name=args.run_name, verbose=args.verbose)
    best = train["best_metrics"]
    print(
        f"train: val mel L1 {best.get('val/mel_l1_db', float('nan')):.2f} dB "
        f"(degraded input: {best.get('val/mel_l1_db_identity', float('nan')):.2f} dB) -> model in {train['model']}"
    )
    from automaster.pipelines.master import run_master

    mastered = run_master(
        train["model"], str(music), str(out / "mastered"), inversion=default_inversion(train["model"]), target_lufs=-14.0, true_peak_dbtp=-1.0,
        tracking_uri=args.tracking_uri, ray_address=args.ray_address, verbose=args.verbose,
    )  # fmt: skip
    print(
        f"master: {mastered['ok']} ok, {mastered['failed']} failed -> {out / 'mastered'} "
        "(audio/, spectrograms/, parameters/, debug/, summary.json)\n"
        f"MLflow runs: {train['tracking_uri']}  (browse: mlflow ui --backend-store-uri {train['tracking_uri']})\n"
        "The demo model trains for seconds; for real results master with the shipped reference model:\n"
        f"  automaster master --input {music} --out {out / 'mastered-reference'}"
    )
    return EXIT_OK
