"""``automaster master``: master every audio file of a folder with a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from automaster.cli.common import (
    EXIT_FAILED, EXIT_OK, UsageError, add_batch_options, add_tracking, add_workers, check_workers, job_options,
    location, log, out_location, print_summary,
)
from automaster.cli.repair import MASTER_DEFAULTS, add_repair_options, default_inversion, master_config, model_or_shipped
from automaster.config import INVERSIONS


def add_product_options(p: argparse.ArgumentParser) -> None:
    """``master``'s delivery options: loudness preset, reference track and amount (issue 13)."""
    from automaster.config import DEFAULT_PRESET, PRESETS

    table = "; ".join(
        f"{n}: {'keep level' if p_.target_lufs is None else f'{p_.target_lufs:g} LUFS'}"
        f"{'' if p_.ceiling_dbtp is None else f', {p_.ceiling_dbtp:g} dBTP'}" for n, p_ in PRESETS.items()
    )
    p.add_argument("--preset", choices=list(PRESETS),
                   help=f"loudness and true-peak ceiling ({table}; default {DEFAULT_PRESET}, or the reference's "
                   "loudness with --reference); --target-lufs/--true-peak override it")
    p.add_argument("--reference", help="audio file whose tonal balance (mid/side spectra), stereo width and loudness to match")
    p.add_argument("--amount", type=float, default=MASTER_DEFAULTS.amount,
                   help="0..1: blend of the input and the restored, tone-matched result before the loudness stage (default 1)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``automaster master`` and its flags."""
    p = sub.add_parser("master", help="master every audio file of a folder with a trained model (in-process or on Ray)")
    p.add_argument("--model", help="checkpoint directory or model.pt (default: models/reference of the checkout)")
    p.add_argument("--input", required=True, help="folder of audio (recursive; WAV/FLAC/OGG/MP3/AIFF)")
    p.add_argument("--out", required=True, help="output folder or URI (audio/, spectrograms/, parameters/, debug/, report/, summary.json)")
    p.add_argument("--inversion", choices=INVERSIONS,
                   help="chain: predicted parameters drive the inverse effects (default for models that forecast "
                   "parameters: it measured best, see README 'Results'); mask: the U-Net's mel gain on the input STFT "
                   "(default for U-Net-only models); griffinlim: the restored mel through Griffin-Lim (thesis)")
    add_repair_options(p, "start Griffin-Lim from the input's phase", " (overrides --preset)")
    add_product_options(p)
    add_workers(p)
    add_batch_options(p)
    add_tracking(p, "MLflow experiment name (default automaster-master)")
    p.set_defaults(func=run)


def _reference(value: str | None) -> str | None:
    """``--reference``: an existing audio file (read by the job's first Masterer, before Ray)."""
    if value is None:
        return None
    if "://" not in value and not Path(value).expanduser().is_file():
        raise UsageError(f"--reference {value!r}: no such file")
    return location(value, flag="--reference")


def run(args: argparse.Namespace) -> int:
    """Run ``automaster master``; returns the exit code (a user's mistake raises :class:`UsageError`)."""
    from automaster.mastering import MasteringError
    from automaster.model.checkpoint import CheckpointError
    from automaster.pipelines.master import check_levels, run_master, summary_table

    model = model_or_shipped(args.model)
    inversion = args.inversion or default_inversion(model)
    check_levels(args.target_lufs, args.true_peak)
    if not 0.0 <= args.amount <= 1.0:
        raise UsageError(f"--amount {args.amount:g}: must be in [0, 1]")
    check_workers(args.workers)
    out = out_location(args.out)
    try:
        summary = run_master(
            location(model, must_exist=True, flag="--model"),
            location(args.input, must_exist=True, flag="--input"),
            out,
            config=master_config(args, inversion=inversion, preset=args.preset, amount=args.amount,
                                 reference=_reference(args.reference)),
            workers=args.workers,
            gpu=args.gpu,
            overwrite=args.overwrite,
            ray=args.ray,
            **job_options(args, "automaster-master"),
        )
    except (MasteringError, CheckpointError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    print(summary_table(summary))
    print_summary("master", summary, f", {summary['files_per_s']:.2f} files/s; an echo was measured and removed in "
                  f"{summary['echo_removed']} files")
    if summary["ok"] == 0 and summary["skipped"] == 0:
        log.error("no file could be mastered")
        return EXIT_FAILED
    return EXIT_OK
