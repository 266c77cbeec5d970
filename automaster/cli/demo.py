"""``automaster demo``: demaster the bundled music, train a small model on it with Ray Train and
master the music with it (local Ray, local MLflow).

The model the demo trains is the spectral restorer's level head (``model.mode = "spectral"``,
``spectral_width = 0``): it hears a damaged clip and estimates how loud its original master was.
That is the part of restoration that learns on a CPU in a minute (the previous shipped level
model, models/spectral/MODEL_CARD.md; the shipped one is now boosted trees, models/level), so the demo can end by saying how much better than the damaged input its model does on the
validation pairs. Every run trains afresh (a new MLflow run); the demaster step resumes and the
mastering step redoes its folder with the new model, so the demo can be run again and again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from automaster.audio import is_audio_file
from automaster.cli.common import CHECKOUT, EXIT_OK, UsageError, add_common, announce
from automaster.cli.repair import default_inversion
from automaster.config import load_config

# The demo's training: the level head alone, on its own loss (34 crops/s on this project's 2-core
# VM against 2.6 with the waveform losses, BENCHMARKS.md), fresh damage of the demaster output's
# originals every step, validated on its fixed validation pairs.
DEMO_CONFIG = {
    "demaster": {"clip_seconds": 10.0, "variants": 3},
    "model": {"mode": "spectral", "spectral_width": 0},
    "loss": {"mrstft": 0.0, "wave_l1": 0.0, "si_sdr": 0.0, "level_db": 1.0, "log_zero_terms": False},
    "train": {"epochs": 3, "steps_per_epoch": 40, "batch_size": 8, "crop_seconds": 3.0, "lr": 0.003, "schedule": "cosine",
              "monitor": "val/level_error_db"},
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``automaster demo`` and its flags."""
    p = sub.add_parser("demo", help="try it: demaster the bundled music, train a small model on it, master the music with it",
                       description="Demaster the bundled music (tests/data/music), train a small model on it with Ray Train "
                       "and master the music with it, on a private loopback Ray and ./mlflow.db. Run it again as often as you "
                       "like: the demaster step resumes, the model is trained afresh and the music mastered again.")
    p.add_argument("--out", default="results/demo", help="output folder (default results/demo)")
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {DEMO_CONFIG['train']['epochs']})")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``automaster demo``; returns the exit code (a user's mistake raises :class:`UsageError`)."""
    music = CHECKOUT / "tests" / "data" / "music"
    if not music.is_dir():
        raise UsageError(f"the bundled music ({music}) is missing: run the demo from a checkout of automaster")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs {args.epochs}: must be >= 1")
    out = Path(args.out).resolve()
    epochs = {"train": {"epochs": args.epochs}} if args.epochs is not None else {}
    config = load_config(args.config, args.set, base=_merged(DEMO_CONFIG, epochs))
    common = {"tracking_uri": args.tracking_uri, "ray_address": args.ray_address, "verbose": args.verbose}
    from automaster.pipelines.batch import format_summary  # torch: after the checks above
    from automaster.pipelines.demaster import run_demaster
    from automaster.pipelines.master import run_master
    from automaster.pipelines.train import run_train

    demaster = run_demaster(str(music), str(out / "paired"), config, **common)
    print(format_summary("demaster", demaster))
    tc = config.train
    announce("train", f"the level head of the spectral restorer, {tc.epochs} epochs x {tc.steps_per_epoch} steps on Ray Train",
             str(out / "train"))
    # A new run name each time: every demo trains afresh (a re-used name would resume a finished run).
    train = run_train(str(out / "paired"), str(out / "train"), config, run_name=args.run_name or f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
                      **common)  # fmt: skip
    best = train["best_metrics"]
    print(f"train: {train['wall_s']:.0f} s on Ray Train, model in {train['model']}\n{learned(best)}")

    # The folder's outputs were made by the previous run's model: redo them with this one.
    mastered = run_master(train["model"], demo_inputs(music), str(out / "mastered"), inversion=default_inversion(train["model"]), overwrite=True,
                          **common)  # fmt: skip
    print(format_summary("master", mastered))
    uri = train["tracking_uri"]
    mlflow_cmd = Path(sys.executable).parent / "mlflow"  # the environment's own (make demo's .venv has no PATH entry)
    mlflow_cmd = str(mlflow_cmd) if mlflow_cmd.exists() else "mlflow"
    print(
        f"\nReports: {out / 'mastered' / 'report'} (one per file), {out / 'mastered' / 'summary.json'}"
        + (f", {mastered['overview']}" if mastered.get("overview") else "") + "\n"
        f"MLflow:  {mlflow_cmd} ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)\n"
        f"The demo's model: {verdict(best)}\n"
        "For a real master of your own music: automaster master --input song.wav --out mastered.wav"
    )
    return EXIT_OK


def demo_inputs(music: Path) -> list[str]:
    """The bundled songs to master, one file per song: the music holds some songs twice (FLAC and
    MP3, for the decoders' tests), and both would be mastered into the same FLAC name."""
    lossless_first = sorted(music.iterdir(), key=lambda f: (f.stem, f.suffix.lower() == ".mp3", f.name))
    songs: dict[str, str] = {}
    for f in lossless_first:
        if is_audio_file(f.name) and f.is_file():
            songs.setdefault(f.stem, str(f))
    return sorted(songs.values())


def learned(best: dict[str, float]) -> str:
    """What the validation said, model against the damaged input (``val/*`` and ``*_identity``)."""
    rows = []
    for name, label, unit in (("level_error_db", "level error", " dB"), ("mrstft", "MR-STFT", ""), ("mel_l1_db", "mel L1", " dB")):
        model, identity = best.get(f"val/{name}"), best.get(f"val/{name}_identity")
        if model is not None and identity is not None:
            rows.append(f"  val {label}: {model:.3f}{unit} (damaged input: {identity:.3f}{unit})")
    return "\n".join(rows)


def verdict(best: dict[str, float]) -> str:
    """One sentence: by how much the model beat (or missed) the damaged input on validation."""
    model, identity = best.get("val/level_error_db"), best.get("val/level_error_db_identity")
    if model is None or identity is None:
        return "no validation figures (see the training log)"
    if model < identity:
        return (f"beat the damaged input by {identity - model:.2f} dB of level error on the validation pairs "
                f"({model:.2f} dB against {identity:.2f} dB, {100 * (1 - model / identity):.0f}% less)")
    return f"did not beat the damaged input this time (level error {model:.2f} dB against {identity:.2f} dB): try --epochs 6"


def _merged(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s sections' keys set (one level deep)."""
    return {k: {**base.get(k, {}), **extra.get(k, {})} for k in {*base, *extra}}
