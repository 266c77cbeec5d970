"""``automaster demaster``: a corpus of music -> a paired (clean, degraded) dataset."""

from __future__ import annotations

import argparse

from automaster.cli.common import (
    EXIT_FAILED, EXIT_OK, add_batch_options, add_common, check_workers, job_options, location, log, out_location,
    overrides, print_summary,
)
from automaster.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``automaster demaster`` and its flags."""
    p = sub.add_parser("demaster", help="corpus of music -> paired (clean, degraded) dataset (in-process or on Ray)")
    p.add_argument("--corpus", required=True, help="FMA root (fma_metadata/ + fma_small/...) or any folder of audio")
    p.add_argument("--out", required=True, help="output folder or URI")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--variants", type=int, help="degraded versions per track (default 1)")
    p.add_argument("--limit", type=int, help="process at most this many tracks (0: all)")
    p.add_argument("--clip-seconds", type=float, help="excerpt length in seconds (default 30)")
    p.add_argument("--min-seconds", type=float, help="reject tracks shorter than this (default 3)")
    p.add_argument("--workers", type=int, help="parallel workers (default: every CPU of the cluster)")
    add_batch_options(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``automaster demaster``; returns the exit code (a user's mistake raises :class:`UsageError`)."""
    check_workers(args.workers)
    sets = overrides(args, "demaster", ["seed", "variants", "limit", "clip_seconds", "min_seconds", "workers"])
    config = load_config(args.config, sets + args.set)
    corpus, out = location(args.corpus, must_exist=True, flag="--corpus"), out_location(args.out)
    from automaster.pipelines.demaster import run_demaster  # torch: after the checks, which answer at once

    summary = run_demaster(
        corpus,
        out,
        config,
        ray=args.ray,
        overwrite=args.overwrite,
        **job_options(args, "automaster-demaster"),
    )
    print_summary("demaster", summary, f", {summary['tracks_per_s']:.2f} tracks/s")
    if summary["ok"] == 0 and summary["skipped"] == 0:
        log.error("no track could be processed")
        return EXIT_FAILED
    return EXIT_OK
