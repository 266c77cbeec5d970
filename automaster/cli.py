"""``automaster <command>``: thin entry points that parse arguments and call one function.

A user's mistake (bad argument, missing folder, unknown config key) prints one line and exits 2;
a job that ran exits 0 even when some tracks failed (they are in its summary), 1 when nothing
could be processed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from automaster.config import DEGRADERS, INVERSIONS, Config, ConfigError, EvalConfig, MasterConfig, load_config

log = logging.getLogger("automaster")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """A user's mistake on the command line."""


def _setup_logging(verbose: bool) -> None:
    """The console shows warnings and errors (everything with ``-v``); a batch job adds its log
    file, which gets everything from INFO up."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    for noisy in ("urllib3", "matplotlib", "numba", "alembic", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML/YAML/JSON config file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("--run-name", help="MLflow run name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local loopback Ray)")
    p.add_argument("-v", "--verbose", action="store_true")


def _demaster_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demaster", help="corpus of music -> paired (clean, degraded) dataset (in-process or on Ray)")
    p.add_argument("--corpus", required=True, help="FMA root (fma_metadata/ + fma_small/...) or any folder of audio")
    p.add_argument("--out", required=True, help="output folder or URI")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--variants", type=int, help="degraded versions per track (default 1)")
    p.add_argument("--limit", type=int, help="process at most this many tracks (0: all)")
    p.add_argument("--clip-seconds", type=float, help="excerpt length in seconds (default 30)")
    p.add_argument("--min-seconds", type=float, help="reject tracks shorter than this (default 3)")
    p.add_argument("--workers", type=int, help="parallel workers (default: every CPU of the cluster)")
    _add_batch_options(p)
    _add_common(p)
    p.set_defaults(func=_cmd_demaster)


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    """The options every batch job (demaster, master, evaluate) shares."""
    p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=None,
                   help="run on Ray (--ray) or in this process (--no-ray); default: in-process for a handful of "
                   "items (batch.local_max_items, 4) without --ray-address, else Ray")
    p.add_argument("--overwrite", action="store_true",
                   help="redo every item, also when --out holds outputs made with other settings")


def _print_summary(job: str, summary: dict, extra: str = "") -> None:
    from automaster.pipelines.batch import format_summary

    print(format_summary(job, summary, extra))


def _overrides(args: argparse.Namespace, section: str, names: Sequence[str]) -> list[str]:
    out = []
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out.append(f"{section}.{name}={value}")
    return out


def _cmd_demaster(args: argparse.Namespace) -> int:
    from automaster.pipelines.demaster import run_demaster

    _check_workers(args.workers)
    sets = _overrides(args, "demaster", ["seed", "variants", "limit", "clip_seconds", "min_seconds", "workers"])
    config = load_config(args.config, sets + args.set)
    summary = run_demaster(
        _location(args.corpus, must_exist=True, flag="--corpus"),
        _out_location(args.out),
        config,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment or "automaster-demaster",
        run_name=args.run_name,
        ray_address=args.ray_address,
        ray=args.ray,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    _print_summary("demaster", summary, f", {summary['tracks_per_s']:.2f} tracks/s")
    if summary["ok"] == 0 and summary["skipped"] == 0:
        log.error("no track could be processed")
        return EXIT_FAILED
    return EXIT_OK


def _location(value: str, must_exist: bool = False, flag: str = "") -> str:
    """An absolute local path (or a URI unchanged); in a submitted job relative paths are refused."""
    from automaster.pipelines.runtime import in_ray_job

    if "://" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and in_ray_job() and _cwd_is_ray_working_dir():
        raise UsageError(
            f"{value!r} is a relative path inside a submitted Ray job, whose working directory is a "
            "temporary copy; pass an absolute path or a URI (s3://, gs://)"
        )
    path = path.resolve()
    if must_exist and not path.exists():
        raise UsageError(f"{flag + ' ' if flag else ''}{value!r} does not exist")
    return str(path)


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 0:
        raise UsageError(f"--workers {workers}: must be >= 0 (0: one per CPU, or per GPU with --gpu)")


def _out_location(value: str, flag: str = "--out") -> str:
    """:func:`_location` for an output folder: an existing file there is a usage error."""
    location = _location(value)
    if "://" not in location and Path(location).exists() and not Path(location).is_dir():
        raise UsageError(f"{flag} {value}: exists and is not a folder")
    return location


def _cwd_is_ray_working_dir() -> bool:
    return "runtime_resources" in str(Path.cwd())


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the U-Net + LSTM cascade on a demastered dataset with Ray Train")
    p.add_argument("--data", required=True, help="a `demaster --out` folder or URI")
    p.add_argument("--out", required=True, help="where checkpoints, Ray results and the final model/ go")
    p.add_argument("--workers", type=int, help="Ray Train workers (default 1)")
    p.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker")
    p.add_argument("--epochs", type=int, help="epochs (default 10)")
    p.add_argument("--mode", choices=["restore", "params", "cascade"], help="model mode (default cascade)")
    _add_common(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from automaster.pipelines.train import run_train

    sets = _overrides(args, "train", ["workers", "epochs"])
    if args.gpu:
        sets.append("train.use_gpu=true")
    if args.mode:
        sets.append(f"model.mode={args.mode}")
    config = load_config(args.config, sets + args.set)
    _announce_training(config, _location(args.out))
    summary = run_train(
        _location(args.data, must_exist=True),
        _location(args.out),
        config,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment or "automaster-train",
        run_name=args.run_name,
        ray_address=args.ray_address,
        verbose=args.verbose,
    )
    best = summary["best_metrics"]
    print(
        f"train: {summary['run_name']} done in {summary['wall_s']:.0f} s; best {summary['monitor']} = "
        f"{best.get(summary['monitor'], float('nan')):.3f} (identity {best.get('val/mel_l1_db_identity', float('nan')):.3f})\n"
        f"  model:  {summary['model']}\n  MLflow: run {summary['mlflow_run_id']} at {summary['tracking_uri']}\n"
        f"  log:    {summary['log_file']}"
    )
    return EXIT_OK


def _announce_training(config: Config, out: str) -> None:
    """One console line before a training run, which says nothing until it ends."""
    from automaster.pipelines.batch import job_log_file

    tc = config.train
    length = f"{tc.steps} steps" if tc.steps > 0 else f"{tc.epochs} epochs"
    print(f"train: {length} on {tc.workers} Ray Train worker(s); logs: {job_log_file(out, 'train')}",
          file=sys.stderr, flush=True)


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="demaster the bundled music, train a small model on it and master the music with it (local Ray, local MLflow)")
    p.add_argument("--out", default="results/demo", help="output folder (default results/demo)")
    p.add_argument("--epochs", type=int, default=2)
    _add_common(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from automaster.pipelines.demaster import run_demaster
    from automaster.pipelines.train import run_train

    music = Path(__file__).resolve().parents[1] / "tests" / "data" / "music"
    if not music.is_dir():
        raise UsageError(f"the bundled music ({music}) is missing: run the demo from a checkout of automaster")
    out = Path(args.out).resolve()
    base = {"demaster": {"clip_seconds": 10.0, "variants": 3}, "train": {"epochs": args.epochs, "crop_frames": 128}}
    config = load_config(args.config, args.set, base=base)
    demaster = run_demaster(
        str(music), str(out / "paired"), config, tracking_uri=args.tracking_uri, ray_address=args.ray_address, verbose=args.verbose
    )
    print(f"demaster: {demaster['ok']} ok, {demaster['failed']} failed -> {out / 'paired'} (summary.json, output_audio/, output_spectrograms/)")
    _announce_training(config, str(out / "train"))
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


_MASTER = MasterConfig()  # the defaults the master and evaluate commands show and use
_EVAL = EvalConfig()


def _add_repair_options(p: argparse.ArgumentParser, init_phase_help: str, levels_help: str) -> None:
    """The mastering options shared by ``master`` and ``evaluate`` (a MasterConfig)."""
    p.add_argument("--iterations", type=int, default=_MASTER.iterations,
                   help=f"Griffin-Lim iterations (default {_MASTER.iterations})")
    p.add_argument("--init-phase", action="store_true", help=init_phase_help)
    p.add_argument("--target-lufs", type=float, help=f"normalise integrated loudness to this (e.g. -14){levels_help}")
    p.add_argument("--true-peak", type=float, help=f"true-peak ceiling in dBTP (e.g. -1){levels_help}")
    p.add_argument("--no-echo-removal", dest="echo_removal", action="store_false",
                   help="skip the echo stage (default: measure the strongest echo from the audio's cepstrum and "
                   f"undo it when its gain is >= {_MASTER.min_echo_gain:g}, before any inversion)")
    p.add_argument("--max-forecast-error", type=float, default=_MASTER.max_forecast_error,
                   help="chain path: apply a forecast parameter only if its validation MAE is at most this share "
                   f"of the predict-the-mean baseline's (default {_MASTER.max_forecast_error:g}; others stay neutral); "
                   "'inf': apply every forecast")


def _master_config(args: argparse.Namespace, **fields) -> MasterConfig:
    """The MasterConfig of the parsed repair options (plus ``fields``)."""
    try:
        return MasterConfig(
            iterations=args.iterations, init_phase=args.init_phase, target_lufs=args.target_lufs,
            true_peak_dbtp=args.true_peak, echo_removal=args.echo_removal,
            max_forecast_error=args.max_forecast_error, **fields,
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _add_product_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--amount", type=float, default=_MASTER.amount,
                   help="0..1: blend of the input and the restored, tone-matched result before the loudness stage (default 1)")


def _master_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("master", help="master every audio file of a folder with a trained model (in-process or on Ray)")
    p.add_argument("--model", help="checkpoint directory or model.pt (default: models/reference of the checkout)")
    p.add_argument("--input", required=True, help="folder of audio (recursive; WAV/FLAC/OGG/MP3/AIFF)")
    p.add_argument("--out", required=True, help="output folder or URI (audio/, spectrograms/, parameters/, debug/, report/, summary.json)")
    p.add_argument("--inversion", choices=INVERSIONS,
                   help="chain: predicted parameters drive the inverse effects (default for models that forecast "
                   "parameters: it measured best, see README 'Results'); mask: the U-Net's mel gain on the input STFT "
                   "(default for U-Net-only models); griffinlim: the restored mel through Griffin-Lim (thesis)")
    _add_repair_options(p, "start Griffin-Lim from the input's phase", " (overrides --preset)")
    _add_product_options(p)
    p.add_argument("--workers", type=int, default=0, help="parallel actors (default: every CPU, or GPU with --gpu)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    _add_batch_options(p)
    p.add_argument("--experiment", help="MLflow experiment name (default automaster-master)")
    p.add_argument("--run-name", help="MLflow run name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local loopback Ray)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_master)


def default_inversion(model: str) -> str:
    """The inversion the model renders by default (:func:`automaster.mastering.default_inversion`)."""
    from automaster.mastering import default_inversion as for_model

    return for_model(model)


def _reference(value: str | None) -> str | None:
    """``--reference``: an existing audio file (read by the job's first Masterer, before Ray)."""
    if value is None:
        return None
    if "://" not in value and not Path(value).expanduser().is_file():
        raise UsageError(f"--reference {value!r}: no such file")
    return _location(value, flag="--reference")


def _cmd_master(args: argparse.Namespace) -> int:
    from automaster.mastering import MasteringError
    from automaster.model.checkpoint import CheckpointError
    from automaster.pipelines.master import check_levels, run_master, summary_table

    model = args.model
    if model is None:
        shipped = Path(__file__).resolve().parents[1] / "models" / "reference"
        if not shipped.exists():
            raise UsageError(f"no --model given and no shipped model at {shipped}; pass --model <checkpoint dir or model.pt>")
        model = str(shipped)
    inversion = args.inversion or default_inversion(model)
    check_levels(args.target_lufs, args.true_peak)
    if not 0.0 <= args.amount <= 1.0:
        raise UsageError(f"--amount {args.amount:g}: must be in [0, 1]")
    _check_workers(args.workers)
    out = _out_location(args.out)
    try:
        summary = run_master(
            _location(model, must_exist=True, flag="--model"),
            _location(args.input, must_exist=True, flag="--input"),
            out,
            config=_master_config(args, inversion=inversion, preset=args.preset, amount=args.amount,
                                  reference=_reference(args.reference)),
            workers=args.workers,
            gpu=args.gpu,
            overwrite=args.overwrite,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment or "automaster-master",
            run_name=args.run_name,
            ray_address=args.ray_address,
            ray=args.ray,
            verbose=args.verbose,
        )
    except (MasteringError, CheckpointError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    print(summary_table(summary))
    _print_summary("master", summary, f", {summary['files_per_s']:.2f} files/s; an echo was measured and removed in "
                   f"{summary['echo_removed']}")
    if summary["ok"] == 0 and summary["skipped"] == 0:
        log.error("no file could be mastered")
        return EXIT_FAILED
    return EXIT_OK


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="how well a model undoes demastering, next to baselines (Ray, MLflow)")
    p.add_argument("--model", help="checkpoint directory or model.pt (default: models/reference of the checkout)")
    p.add_argument("--clean", required=True, help="folder of clean masters (recursive) or an FMA root (its --split)")
    p.add_argument("--out", required=True, help="output folder or URI (metrics.json, metrics.csv, parameters.csv)")
    p.add_argument("--seed", type=int, default=_EVAL.seed,
                   help=f"degradation seed, with each track id (default {_EVAL.seed}; demaster's default is 0)")
    p.add_argument("--degrader", choices=DEGRADERS, help="who damages the clean clips: our chain (default) or "
                   "Spotify's pedalboard (another implementation)")
    p.add_argument("--degraded", help="folder of degraded files at the clean files' relative paths (instead of a degrader)")
    p.add_argument("--inversions", help=f"comma-separated: {','.join(INVERSIONS)} (default: every one the model can do)")
    p.add_argument("--split", choices=["training", "validation", "test", "all"],
                   help="corpus split (default: test for an FMA root, every file for a plain folder)")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many files (0: all)")
    p.add_argument("--clip-seconds", type=float, default=_EVAL.clip_seconds,
                   help=f"centred excerpt length in seconds (default {_EVAL.clip_seconds:g})")
    p.add_argument("--mono", action="store_true", help="downmix to mono (default: keep the channels)")
    _add_repair_options(p, "start Griffin-Lim (model and oracle) from the degraded input's phase", "; model inversions only")
    p.add_argument("--workers", type=int, default=0, help="parallel actors (default: every CPU, or GPU with --gpu)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    _add_batch_options(p)
    p.add_argument("--experiment", help="MLflow experiment name (default automaster-evaluate)")
    p.add_argument("--run-name", help="MLflow run name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local loopback Ray)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from automaster.mastering import MasteringError
    from automaster.model.checkpoint import CheckpointError
    from automaster.pipelines.evaluate import format_table, run_evaluate
    from automaster.pipelines.master import check_levels

    if args.degraded and args.degrader:
        raise UsageError("--degraded gives the damaged files; --degrader cannot be used with it")
    model = args.model
    if model is None:
        shipped = Path(__file__).resolve().parents[1] / "models" / "reference"
        if not shipped.exists():
            raise UsageError(f"no --model given and no shipped model at {shipped}; pass --model <checkpoint dir or model.pt>")
        model = str(shipped)
    inversions = tuple(i.strip() for i in args.inversions.split(",") if i.strip()) if args.inversions else ()
    try:
        evaluation = EvalConfig(
            seed=args.seed, degrader=args.degrader or _EVAL.degrader, inversions=inversions,
            clip_seconds=args.clip_seconds, mono=args.mono,
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    check_levels(args.target_lufs, args.true_peak)
    _check_workers(args.workers)
    out = _out_location(args.out)
    try:
        metrics = run_evaluate(
            _location(model, must_exist=True, flag="--model"),
            _location(args.clean, must_exist=True, flag="--clean"),
            out,
            evaluation=evaluation,
            mastering=_master_config(args),
            degraded_dir=_location(args.degraded, must_exist=True) if args.degraded else None,
            split=args.split,
            limit=args.limit,
            workers=args.workers,
            gpu=args.gpu,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment or "automaster-evaluate",
            run_name=args.run_name,
            ray_address=args.ray_address,
            ray=args.ray,
            overwrite=args.overwrite,
            verbose=args.verbose,
        )
    except ConfigError:
        raise
    except (MasteringError, CheckpointError, FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(format_table(metrics))
    _print_summary("evaluate", metrics["summary"], f"; metrics: {metrics['out']}/metrics.json, metrics.csv, parameters.csv")
    if metrics["config"]["n_ok"] == 0:
        log.error("no file could be evaluated")
        return EXIT_FAILED
    return EXIT_OK


def _tune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="Ray Tune search over the loss weights and learning rate (trials as MLflow child runs)")
    p.add_argument("--data", required=True, help="a `demaster --out` folder or URI")
    p.add_argument("--out", required=True, help="where Tune's state, trial checkpoints, best_config.json and model/ go")
    p.add_argument("--samples", type=int, help="trials (default 8)")
    p.add_argument("--epochs", type=int, help="epochs per trial, the most ASHA lets one run (default train.epochs)")
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (default 1)")
    _add_common(p)
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from automaster.pipelines.tune import run_tune

    sets = _overrides(args, "tune", ["samples", "epochs", "workers_per_trial"])
    config = load_config(args.config, sets + args.set)
    try:
        summary = run_tune(
            _location(args.data, must_exist=True),
            _location(args.out),
            config,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment or "automaster-tune",
            run_name=args.run_name,
            ray_address=args.ray_address,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    params = ", ".join(f"{k}={v:.4g}" for k, v in summary["best_params"].items())
    print(
        f"tune: {summary['trials_run']} trials in {summary['wall_s']:.0f} s; best {summary['best_trial']} "
        f"({params}): {summary['monitor']} = {summary['best_metric']:.3f} at epoch {summary['best_epoch']}\n"
        f"  early stopping: {summary['trials_stopped_early']} trials stopped, {summary['epochs_run']} of "
        f"{summary['epochs_full']} epochs run ({100 * summary['compute_saved']:.0f}% compute saved); "
        f"{summary['trials_failed']} failed\n"
        f"  best config: {summary['best_config']}  (python jobs/train.py --config {summary['best_config']} ...)\n"
        f"  model:       {summary['model']}\n"
        f"  MLflow:      parent run {summary['mlflow_run_id']} at {summary['tracking_uri']}  (automaster compare --experiment {summary['experiment']})"
    )
    return EXIT_OK


def _compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="MLflow runs side by side (params, metrics, duration); mlflow ui for the browser view")
    p.add_argument("--experiment", action="append", help="experiment name (repeatable; default: every experiment)")
    p.add_argument("--metric", action="append", help="metric column, the first sorts (repeatable; default: the validation metrics)")
    p.add_argument("--top", type=int, default=0, help="show only the best K runs (default: all)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from automaster.pipelines.compare import CompareError, compare_runs, format_table

    try:
        table = compare_runs(args.experiment, args.metric, top=args.top, csv=args.csv, tracking_uri=args.tracking_uri)
    except CompareError as exc:
        raise UsageError(str(exc)) from None
    print(format_table(table))
    if args.csv:
        print(f"\n{len(table)} runs written to {args.csv}")
    return EXIT_OK


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _demaster_parser, _train_parser, _demo_parser, _master_parser, _evaluate_parser, _tune_parser, _compare_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automaster", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    try:
        return args.func(args)
    except (UsageError, ConfigError) as exc:
        print(f"automaster {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # Ctrl-C: one line (a search says how to resume), no traceback
        detail = str(exc) or "interrupted; finished outputs are kept and a re-run of the same command resumes"
        print(f"automaster {args.command}: {detail}", file=sys.stderr)
        return 130
    except Exception as exc:
        from automaster.corpus import CorpusError

        if isinstance(exc, CorpusError):
            print(f"automaster {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
