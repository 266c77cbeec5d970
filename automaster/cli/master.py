"""``automaster master``: master one file into one file, or files and folders into a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from automaster.cli.common import (
    EXIT_FAILED, EXIT_OK, UsageError, add_batch_options, add_tracking, add_workers, check_name_length, check_workers,
    job_options, location, log, out_location, print_summary,
)
from automaster.cli.repair import MASTER_DEFAULTS, add_repair_options, default_inversion, master_config, model_or_shipped
from automaster.config import INVERSIONS, MIN_REFERENCE_S


def add_product_options(p: argparse.ArgumentParser) -> None:
    """``master``'s delivery options: loudness preset, reference track and amount (issue 13)."""
    from automaster.config import DEFAULT_PRESET, PRESETS

    def describe(name: str, preset) -> str:
        if name == "restore":
            level = "the level the level model estimates for the original master (--level-model none: the input's level)"
        else:
            level = "keep the level" if preset.target_lufs is None else f"{preset.target_lufs:g} LUFS"
        return f"{name}: {level}{'' if preset.ceiling_dbtp is None else f', {preset.ceiling_dbtp:g} dBTP'}"

    table = "; ".join(describe(n, p_) for n, p_ in PRESETS.items())
    p.add_argument("--preset", choices=list(PRESETS),
                   help=f"loudness and true-peak ceiling ({table}; default {DEFAULT_PRESET}, or the reference's "
                   "loudness with --reference); --target-lufs/--true-peak override it")
    p.add_argument("--reference", help="audio file whose tonal balance (mid/side spectra), stereo width and loudness to match")
    p.add_argument("--references", metavar="CSV",
                   help="a CSV with the columns input,reference: master each input toward its own reference, in one "
                   "job (replaces --input; relative paths are read from the CSV's folder)")
    p.add_argument("--amount", type=float, default=MASTER_DEFAULTS.amount,
                   help="0..1: blend of the input and the restored, tone-matched result before the loudness stage (default 1)")
    p.add_argument("--max-eq-db", type=float, default=MASTER_DEFAULTS.max_eq_db,
                   help="bound of the reference-matching EQ, either way, mid and side, its broadband side (width) gain "
                   f"included (default {MASTER_DEFAULTS.max_eq_db:g} dB)")




def add_parser(sub: argparse._SubParsersAction) -> None:
    """``automaster master`` and its flags."""
    p = sub.add_parser(
        "master", help="master one file, several, or folders of audio (one file: in-process; many: in-process or on Ray)",
        description="Master audio. One file into one file: automaster master --input song.flac --out mastered.flac "
        "(the format follows --out's extension; the report goes beside it). Files and folders into a folder: "
        "automaster master --input a.wav --input albums/ --out mastered/ (audio/, report/, summary.json, overview.png; "
        "a re-run resumes).",
    )
    p.add_argument("--model", help="checkpoint directory or model.pt (default: models/reference of the checkout)")
    p.add_argument("--input", action="append", metavar="FILE|FOLDER",
                   help="an audio file or a folder of audio (recursive; WAV/FLAC/OGG/MP3/AIFF); repeatable (a file given "
                   "twice, by any spelling or link, or also inside a folder given, is mastered once)")
    p.add_argument("--out", required=True,
                   help="an audio file (.wav/.flac/.ogg/.mp3) for one input file, else an output folder or URI "
                   "(audio/, report/, summary.json, overview.png)")
    p.add_argument("--pictures", action="store_true",
                   help="also draw each file's pictures: its report figure, input/output spectrograms and the model's "
                   "debug view (off by default: they cost more than the mastering)")
    p.add_argument("--inversion", choices=INVERSIONS,
                   help="chain: predicted parameters drive the inverse effects (default for models that forecast "
                   "parameters: it measured best, see README 'Results'); mask: the U-Net's mel gain on the input STFT "
                   "(default for U-Net-only models); griffinlim: the restored mel through Griffin-Lim (thesis)")
    add_repair_options(p, "start Griffin-Lim from the input's phase", " (overrides --preset)")
    add_product_options(p)
    add_workers(p)
    add_batch_options(p)
    add_tracking(p, "MLflow experiment name (default automaster-master; a single file is not recorded)")
    p.set_defaults(func=run)


def _reference(value: str | None) -> str | None:
    """``--reference``: an existing audio file (read by the job's first Masterer, before Ray)."""
    if value is None:
        return None
    if "://" not in value and not Path(value).expanduser().is_file():
        raise UsageError(f"--reference {value!r}: no such file")
    where = location(value, flag="--reference")
    _check_reference_length(where)
    return where


def _check_reference_length(path: str) -> None:
    """A reference shorter than one 400 ms loudness block has no loudness or tone to match (its
    level would be a guess the song is turned to)."""
    from automaster.audio import AudioError, audio_info

    try:
        seconds = audio_info(path).duration_s
    except (AudioError, OSError):  # unreadable: the Masterer names the file and the reason
        return
    if seconds < MIN_REFERENCE_S:
        raise UsageError(f"--reference {path!r} is {seconds:.2f} s long: a reference needs at least "
                         f"{MIN_REFERENCE_S:g} s (one loudness block)")


def _inputs(args: argparse.Namespace) -> list[str]:
    """The ``--input`` values as locations; none with ``--references`` (its CSV lists them)."""
    if args.references is not None:
        if args.input:
            raise UsageError("--references lists the inputs (its input column): drop --input")
        if args.reference is not None:
            raise UsageError("--references gives each input its own reference: drop --reference")
        return []
    if not args.input:
        raise UsageError("--input is required (an audio file or a folder; repeatable), or --references CSV")
    inputs = [location(value, must_exist=True, flag="--input") for value in args.input]
    for value, where in zip(args.input, inputs):
        path = Path(where)
        if "://" not in where and not path.is_dir() and not path.is_file():  # reading one would wait forever
            raise UsageError(f"--input {value!r}: not a file or folder (a pipe, a device or a socket)")
    return inputs


def run(args: argparse.Namespace) -> int:
    """Run ``automaster master``; returns the exit code (a user's mistake raises :class:`UsageError`)."""
    from automaster import storage
    from automaster.pipelines.master_inputs import distinct_inputs, is_file_output, repeat_reason  # light: no torch before the checks

    model = model_or_shipped(args.model)
    if not 0.0 <= args.amount <= 1.0:
        raise UsageError(f"--amount {args.amount:g}: must be in [0, 1]")
    check_workers(args.workers)
    inputs = _inputs(args)
    references = None if args.references is None else location(args.references, must_exist=True, flag="--references")
    distinct, repeats = distinct_inputs(inputs)  # a folder job lists its repeats in its summary
    one_file = len(distinct) == 1 and not Path(distinct[0]).is_dir() and "://" not in distinct[0] and is_file_output(args.out)
    if is_file_output(args.out) and not one_file:
        raise UsageError(f"--out {args.out}: a file name takes exactly one input file; name a folder for "
                         f"{'a folder' if len(distinct) == 1 else 'several inputs'}")
    if one_file and repeats:  # every --input is that one file: say so in the user's spellings
        inputs = distinct
        for value in args.input[1:]:
            print(f"master: --input {storage.display_name(value)}: {repeat_reason(value, 'file', args.input[0])}")
    inversion = args.inversion or default_inversion(model)  # reads the model (torch): after the checks
    config_kwargs = dict(inversion=inversion, preset=args.preset, amount=args.amount, reference=_reference(args.reference))
    # torch comes in with these: after the checks above, so that a mistake is answered at once
    from automaster.mastering import MasteringError
    from automaster.model.checkpoint import CheckpointError

    try:
        if one_file:
            return _run_one(args, model, inputs[0], config_kwargs)
        from automaster.pipelines.master import check_levels, run_master

        check_levels(args.target_lufs, args.true_peak)
        summary = run_master(
            location(model, must_exist=True, flag="--model"), inputs, out_location(args.out),
            config=master_config(args, **config_kwargs), references=references, pictures=args.pictures,
            workers=args.workers, gpu=args.gpu, overwrite=args.overwrite, ray=args.ray,
            **job_options(args, "automaster-master"),
        )
    except (MasteringError, CheckpointError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    from automaster.pipelines.master import summary_table

    print(summary_table(summary))
    print_summary("master", summary, f", {summary['files_per_s']:.2f} files/s; an echo was measured and removed in "
                  f"{summary['echo_removed']} files" + (f"\n  overview: {summary['overview']}" if summary.get("overview") else ""))
    if summary["ok"] == 0 and summary["skipped"] == 0:
        log.error("no file could be mastered")
        return EXIT_FAILED
    return EXIT_OK


def _run_one(args: argparse.Namespace, model: str, source: str, config_kwargs: dict) -> int:
    """One file into one file, in this process (no Ray, no MLflow run)."""
    from automaster import storage
    from automaster.pipelines.master_one import master_one

    out = location(args.out, flag="--out")
    check_name_length(out, "--out", ".parameters.json" if args.pictures else ".report.json")  # the files beside it
    _check_output_format(source, out)
    record = master_one(location(model, must_exist=True, flag="--model"), source, out,
                        config=master_config(args, **config_kwargs), pictures=args.pictures, overwrite=args.overwrite)
    name = storage.display_name(source)
    if record["status"] == "error":
        print(f"master: {name}: failed: {record['reason']}")
        return EXIT_FAILED
    if record["status"] == "skipped":
        print(f"master: {storage.display_name(out)} is up to date ({record['reason']}; --overwrite redoes it)")
        return EXIT_OK
    print(f"master: {name} -> {storage.display_name(out)}: {_fmt(record.get('lufs_before'))} -> "
          f"{_fmt(record.get('lufs_after'))} LUFS, true peak {_fmt(record.get('true_peak_after_dbtp'))} dBTP; "
          f"{record.get('applied') or 'nothing applied'} ({record['seconds']:.1f} s)")
    for note in record.get("notes") or []:
        print(f"  note: {note}")
    print(f"  report: {storage.display_name(record['report'])}")
    return EXIT_OK


def _check_output_format(source: str, out: str) -> None:
    """The output keeps the input's rate and channels: a format that cannot hold them (MP3 at
    96 kHz or in 5.1) is one line before any work, not an encoder's traceback after it."""
    from automaster.audio import AudioError, audio_info, format_refusal

    try:
        info = audio_info(source)
    except (AudioError, OSError):  # an unreadable input: master_one names the file and the reason
        return
    if refusal := format_refusal(out, info.sample_rate, info.channels):
        raise UsageError(f"--out {out}: {refusal}; name a .flac or .wav file")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
