"""``python -m automaster.training --audio <folder> | --data <demaster out> --out <dir> ...``

Trains in this process on one device, with neither Ray nor MLflow. A user's mistake exits with
status 2 and one line naming the flag and its value, before any audio is read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from automaster.config import ConfigError, load_config
from automaster.training.bank import BankError

log = logging.getLogger("automaster.training")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m automaster.training", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", action="append", metavar="FOLDER", help="clean audio: a folder or FMA layout (repeatable)")
    src.add_argument("--data", metavar="DIR", help="a demaster output (its originals, or its pairs with train.source=pairs)")
    p.add_argument("--out", required=True, help="checkpoints, metrics.jsonl and the best model (resumes when it has one)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (train.steps)")
    length.add_argument("--epochs", type=int, help="epochs (train.epochs; an epoch of fresh damage is train.steps_per_epoch)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--config", help="a TOML/YAML/JSON config file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    sets = list(args.set)
    if args.steps is not None:
        if args.steps < 1:
            return _fail(f"--steps must be >= 1, got {args.steps}")
        sets.append(f"train.steps={args.steps}")
    if args.epochs is not None:
        if args.epochs < 1:
            return _fail(f"--epochs must be >= 1, got {args.epochs}")
        sets += [f"train.epochs={args.epochs}", "train.steps=0"]
    try:
        config = load_config(args.config, sets)
    except ConfigError as exc:
        return _fail(str(exc))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        return _fail(f"--device: expected cpu, cuda or cuda:N, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return _fail(f"--device {args.device}: CUDA is not available here")
    for folder in args.audio or []:
        if not Path(folder).is_dir():
            return _fail(f"--audio: {folder!r} is not a folder")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from automaster.training.loop import resume_conflict, train

    if conflict := resume_conflict(config, args.out):
        return _fail(f"--out {args.out}: holds a run to resume with other settings ({conflict}); use another --out or the same settings")
    from automaster.training.sources import audio_source, data_source

    try:
        source = audio_source(args.audio, config) if args.audio else data_source(args.data, config)
    except (BankError, ValueError) as exc:
        return _fail(f"{'--audio' if args.audio else '--data'}: {exc}")
    log.info("source: %s", json.dumps(source.description))
    try:
        summary = train(config, source, args.out, device)
    except KeyboardInterrupt:  # Ctrl-C: the last validated checkpoint is on disk (written atomically)
        last = Path(args.out, "checkpoints", "last")
        where = f"{last} holds the last validated step; the same command resumes from it" if last.is_dir() else "no checkpoint yet"
        print(f"interrupted: {where}", file=sys.stderr)
        return 130
    summary["source"] = source.description
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    log.info("best %s = %.4g; model in %s", summary["monitor"], summary["best"], summary["model"])
    return 0
