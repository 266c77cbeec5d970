"""``automaster train-compressor``: the compressor detector/estimator, on Ray Train (or searched with Ray Tune)."""

from __future__ import annotations

import argparse

from automaster.cli.common import EXIT_OK, UsageError, add_tracking, announce, job_options, location, out_location, plural

DEFAULTS = {"epochs": 30, "hidden": 32, "layers": 2, "lr": 3e-3, "weight_decay": 1e-4, "dropout": 0.0, "batch_size": 512, "features": "all",
            "seed": 0}  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``automaster train-compressor`` and its flags."""
    p = sub.add_parser("train-compressor", help="fit the compressor detector/estimator on waveform statistics (Ray Data, Ray Train; --samples: Ray Tune)")
    p.add_argument("--corpus", action="append", required=True, metavar="FOLDER",
                   help="clean music, an FMA layout or a folder (repeatable); training split trains, validation split selects")
    p.add_argument("--out", required=True, help="where the examples cache, Ray's results, model/ and the summary go")
    p.add_argument("--samples", type=int, default=0, help="Ray Tune trials over size, lr, weight decay, dropout and feature set (default 0: one Ray Train run)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP; default 1)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (per trial with --samples)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="epochs (per trial with --samples; default 30)")
    p.add_argument("--hidden", type=int, default=DEFAULTS["hidden"], help="units per hidden layer (default 32)")
    p.add_argument("--layers", type=int, default=DEFAULTS["layers"], help="hidden layers (default 2)")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="AdamW learning rate (default 3e-3)")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"], help="AdamW weight decay (default 1e-4)")
    p.add_argument("--dropout", type=float, default=DEFAULTS["dropout"], help="dropout after each hidden layer (default 0)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="examples per step, over all workers (default 512)")
    p.add_argument("--features", default=DEFAULTS["features"],
                   help="'all' or groups of level, bands, slopes, modulation joined by '+' (default all)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="the network's seed (default 0)")
    p.add_argument("--crops", type=int, default=50, help="crops per training song (default 50)")
    p.add_argument("--val-crops", type=int, default=20, help="crops per validation song (default 20)")
    p.add_argument("--seconds", type=float, default=8.0, help="crop length in seconds (default 8)")
    p.add_argument("--example-seed", type=int, default=21, help="the crops' and damage's seed (default 21)")
    add_tracking(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``automaster train-compressor``; a user's mistake raises :class:`UsageError` before Ray starts."""
    from automaster.pipelines.compressor import ExampleSpec
    from automaster.training.compressor import NetConfig

    net = NetConfig(hidden=args.hidden, layers=args.layers, lr=args.lr, weight_decay=args.weight_decay, dropout=args.dropout, epochs=args.epochs,
                    batch_size=args.batch_size, features=args.features, seed=args.seed)  # fmt: skip
    spec = ExampleSpec(crops=args.crops, val_crops=args.val_crops, seconds=args.seconds, seed=args.example_seed)
    try:
        net.check()
        spec.check()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.samples < 0:
        raise UsageError(f"--samples must be >= 0 (0: one Ray Train run), got {args.samples}")
    corpora = [location(c, must_exist=True, flag="--corpus") for c in args.corpus]
    out = out_location(args.out)
    check_splits(corpora, args.seconds)
    options = job_options(args, "automaster-compressor")
    try:
        summary, head = _run(args, corpora, out, net, spec, options)
    except ValueError as exc:  # the corpora give no usable crop, --gpu without a GPU: one line
        raise UsageError(str(exc)) from None
    _print_summary(summary, head)
    return EXIT_OK


def _run(args: argparse.Namespace, corpora: list[str], out: str, net, spec, options: dict) -> tuple[dict, str]:
    """The search (``--samples``) or the fit; returns the summary and the first line of the report."""
    if args.samples:
        from automaster.pipelines.compressor_tune import JOB, run_search

        announce(JOB, f"making the examples, then {plural(args.samples, 'trial')} of up to {plural(args.epochs, 'epoch')} "
                 "on Ray Tune", out)
        summary = run_search(corpora, out, net, spec, samples=args.samples, use_gpu=args.gpu, **options)
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["best_params"].items())
        return summary, f"{JOB}: {plural(len(summary['trials']), 'trial')} in {summary['wall_s']:.0f} s; the best, {summary['best_trial']}: {params}"
    from automaster.pipelines.compressor import JOB, run_fit

    announce(JOB, f"making the examples, then {plural(args.epochs, 'epoch')} on {plural(args.workers, 'Ray Train worker')}", out)
    summary = run_fit(corpora, out, net, spec, workers=args.workers, use_gpu=args.gpu, **options)
    return summary, f"{JOB}: trained in {summary['wall_s']:.0f} s (run {summary['run_name']})"


def check_splits(corpora: list[str], seconds: float | None = None) -> None:
    """Every example comes from the corpora's training split and every figure from their validation
    split: a usage error, before Ray starts, when one of them is empty or (``seconds``) has no song
    as long as a crop (read from the files' headers, until one is)."""
    from automaster.audio import AudioError, audio_info
    from automaster.corpus import CorpusError, scan_corpus

    try:
        tracks = [t for root in corpora for t in scan_corpus(root).tracks]
    except CorpusError as exc:
        raise UsageError(str(exc)) from None
    for split in ("training", "validation"):
        songs = [t for t in tracks if t.split == split]
        if not songs:
            raise UsageError(f"--corpus {' '.join(corpora)}: no {split} songs (the training split trains, the validation split selects)")
        if seconds is None:
            continue
        longest = 0.0
        for t in songs:
            try:
                longest = max(longest, audio_info(t.path).duration_s)
            except (AudioError, OSError):  # unreadable: the job records it with the reason
                continue
            if longest >= seconds:
                break
        else:
            raise UsageError(f"--seconds {seconds:g}: no {split} song is that long (the longest of {len(songs)} is "
                             f"{longest:.1f} s); give a shorter crop")


def _print_summary(summary: dict, head: str) -> None:
    """The end-of-run lines: what it learned from, how it did on validation (against a constant
    guess and chance), the songs it could not read, and where the model, the MLflow run and the log are."""
    from automaster.pipelines.compressor import SUMMARY

    best, examples = summary["best"], summary["examples"]

    def made(split: str) -> str:
        info = examples[split]
        songs = f" from {plural(info['songs_used'], 'song')}" if "songs_used" in info else ""  # the songs that gave a crop
        return f"{plural(info['rows'], split + ' example')}{songs}{' (cached)' if info.get('cached') else ''}"

    lines = [
        head,
        f"  examples: {made('training')}, {made('validation')}",
        f"  validation: threshold error {best['val/mae_ratio/threshold_rel_db']:.2f}x and ratio error "
        f"{best['val/mae_ratio/log_ratio']:.2f}x a constant guess's (under 1x is skill); compression detected with "
        f"AUC {best['val/detector_auc']:.3f} (0.5 is chance), {best['val/false_positive_rate']:.1%} false alarms",
    ]
    unreadable = [(split, *e) for split in examples for e in examples[split].get("errors", [])]
    lines += [f"  left out: song {track} ({split}): {_reason(why)}" for split, track, why in unreadable[:10]]
    if len(unreadable) > 10:
        lines.append(f"  ... {len(unreadable) - 10} more songs left out in {SUMMARY}")
    lines += [f"  model:   {summary['model']}", f"  MLflow:  run {summary['mlflow_run_id']} at {summary['tracking_uri']}",
              f"  log:     {summary['log_file']}"]
    print("\n".join(lines))


def _reason(error: str) -> str:
    """An example worker's error without its exception class when it is the audio reader's own."""
    for prefix in ("AudioError: ", "FileError: "):
        if error.startswith(prefix):
            return error[len(prefix):]
    return error
