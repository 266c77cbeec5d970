"""``automaster compare``: MLflow runs side by side."""

from __future__ import annotations

import argparse

from automaster.cli.common import EXIT_OK, UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``automaster compare`` and its flags."""
    p = sub.add_parser("compare", help="MLflow runs side by side (params, metrics, duration); mlflow ui for the browser view")
    p.add_argument("--experiment", action="append", help="experiment name (repeatable; default: every experiment)")
    p.add_argument("--metric", action="append", help="metric column, the first sorts (repeatable; default: the validation metrics)")
    p.add_argument("--top", type=int, default=0, help="show only the best K runs (default: all)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``automaster compare``; returns the exit code (a user's mistake raises :class:`UsageError`)."""
    from automaster.pipelines.compare import CompareError, compare_runs, format_table

    try:
        table = compare_runs(args.experiment, args.metric, top=args.top, csv=args.csv, tracking_uri=args.tracking_uri)
    except CompareError as exc:
        raise UsageError(str(exc)) from None
    print(format_table(table))
    if args.csv:
        print(f"\n{len(table)} runs written to {args.csv}")
    return EXIT_OK
