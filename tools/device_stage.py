"""Stage a compact training corpus (and the wheels it needs) for a GPU machine that has no network.

    python tools/device_stage.py --audio ../shared/data/fma_mini --audio <debian corpus> \\
        --out .device --budget-mb 44 [--seconds 20] [--wheels]

A GPU machine lent by the minute may have torch, numpy and scipy but neither soundfile nor a
network, and takes at most 64 MiB per call (working tree included). This writes, under ``--out``:

* ``corpus/``: centred mono excerpts of ``--seconds`` at 44.1 kHz as Ogg Vorbis, in the FMA layout
  (``fma_metadata/tracks.csv`` + ``fma_small/NNN/NNNNNN.ogg``), so the corpus reader keeps each
  song's split: every validation song first (``--val-songs`` at most), then training songs in a
  seeded shuffle across the corpora until ``--budget-mb`` is spent. **No test-split song is ever
  staged**, so the evaluation's test split stays unseen.
* ``corpus/STAGED.csv``: staged id, split, source corpus, source track id and path, seconds.
* ``whl/`` (``--wheels``): soundfile, cffi and pycparser for CPython 3.12 manylinux x86-64
  (``pip download``), installed there by ``tools/device_train.sh``.

The staged corpus is a training input like any other: ``python -m automaster.training --audio
.device/corpus ...`` reads it here or there.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from automaster.audio import AudioError, FileError, read_excerpt  # noqa: E402
from automaster.corpus import CorpusError, scan_corpus  # noqa: E402

RATE = 44100
WHEELS = ("soundfile", "cffi", "pycparser")
# FMA's tracks.csv: two header rows (the column's group, its name) and a track_id row.
_HEADER = [["", "set", "set", "track"], ["", "split", "subset", "genre_top"], ["track_id", "", "", ""]]


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--audio", action="append", required=True, metavar="FOLDER", help="a corpus (folder or FMA layout; repeatable)")
    p.add_argument("--out", required=True, help="the staging folder (an ignored folder of the checkout, e.g. .device)")
    p.add_argument("--budget-mb", type=float, default=44.0, help="MiB of staged audio at most")
    p.add_argument("--seconds", type=float, default=20.0, help="centred excerpt per song")
    p.add_argument("--val-songs", type=int, default=24, help="validation songs at most (taken first)")
    p.add_argument("--quality", type=float, default=0.35, help="Vorbis quality, 0-1 (0.35: about 70 kbit/s mono)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wheels", action="store_true", help="also pip-download the cp312 wheels into <out>/whl")
    return p.parse_args(argv)


def candidates(roots: list[str], seed: int, val_songs: int) -> list[tuple[str, object]]:
    """``(root, track)`` to stage, in order: validation songs (at most ``val_songs``), then
    training songs shuffled with ``seed``; test-split songs never.

    Raises:
        CorpusError: a root with no audio, or no training or validation song at all.
    """
    val, train, n_test = [], [], 0
    for root in roots:
        for track in scan_corpus(root).tracks:
            if track.split == "validation":
                val.append((root, track))
            elif track.split == "training":
                train.append((root, track))
            else:
                n_test += 1
    if not val and not train:
        raise CorpusError(f"no training or validation song ({n_test} test-split songs, never staged)")
    rng = random.Random(seed)
    rng.shuffle(val)
    rng.shuffle(train)
    return val[:val_songs] + train


def stage(args: argparse.Namespace, songs: list[tuple[str, object]], out: Path) -> dict[str, float]:
    """Excerpts of ``songs`` into the corpus folder ``out`` until the budget is spent."""
    import soundfile as sf

    subset = out / "fma_small"
    (out / "fma_metadata").mkdir(parents=True, exist_ok=True)
    budget = int(args.budget_mb * 2**20)
    used, rows, skipped = 0, [], 0
    for root, track in songs:
        try:
            audio, _ = read_excerpt(track.path, args.seconds, sample_rate=RATE, mono=True, min_seconds=min(args.seconds, 6.0))
        except (AudioError, FileError) as exc:
            print(f"skipped {track.path}: {exc}", file=sys.stderr)
            skipped += 1
            continue
        sid = len(rows) + 1
        path = subset / f"{sid // 1000:03d}" / f"{sid:06d}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.asarray(audio).reshape(-1), RATE, format="OGG", subtype="VORBIS", compression_level=1.0 - args.quality)
        size = path.stat().st_size
        if used + size > budget:
            path.unlink()
            break
        used += size
        rows.append({"staged_id": f"{sid:06d}", "split": track.split, "corpus": root, "track_id": track.track_id,
                     "source": track.path, "seconds": round(np.asarray(audio).shape[-1] / RATE, 3)})  # fmt: skip
    with open(out / "fma_metadata" / "tracks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows(_HEADER)
        w.writerows([int(r["staged_id"]), r["split"], "small", "unknown"] for r in rows)
    with open(out / "STAGED.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["staged_id"])
        w.writeheader()
        w.writerows(rows)
    seconds = {s: sum(r["seconds"] for r in rows if r["split"] == s) for s in ("training", "validation")}
    return {"songs": len(rows), "mib": used / 2**20, "skipped": skipped, **{f"{k}_s": v for k, v in seconds.items()}}


def _usage_error(args: argparse.Namespace) -> str:
    """The first bad argument as one line, or ``""``."""
    if not (math.isfinite(args.budget_mb) and args.budget_mb > 0):
        return f"--budget-mb must be > 0, got {args.budget_mb}"
    if not (math.isfinite(args.seconds) and args.seconds >= 1):
        return f"--seconds must be at least 1, got {args.seconds}"
    if not 0 <= args.quality <= 1:
        return f"--quality must be in [0, 1], got {args.quality}"
    if args.val_songs < 0:
        return f"--val-songs must be >= 0, got {args.val_songs}"
    for root in args.audio:
        if not Path(root).is_dir():
            return f"--audio: {root!r} is not a folder"
    if Path(args.out).exists() and not Path(args.out).is_dir():
        return f"--out: {args.out!r} exists and is not a folder"
    if Path(args.out, "corpus").exists():
        return f"--out: {Path(args.out, 'corpus')} exists; remove it to stage again"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if error := _usage_error(args):
        return _fail(error)
    try:
        songs = candidates(args.audio, args.seed, args.val_songs)
    except CorpusError as exc:
        return _fail(f"--audio: {exc}")
    # Staged beside the final folder and renamed at the end: an interrupted run leaves no corpus
    # that looks finished, and the next run starts over.
    final, partial = Path(args.out, "corpus"), Path(args.out, "corpus.partial")
    shutil.rmtree(partial, ignore_errors=True)
    summary = stage(args, songs, partial)
    if not summary["songs"]:
        shutil.rmtree(partial, ignore_errors=True)
        if summary["skipped"] == len(songs):
            print(f"error: nothing staged: all {len(songs)} songs unreadable or too short", file=sys.stderr)
            return 1
        return _fail(f"--budget-mb {args.budget_mb:g}: smaller than one excerpt, nothing staged")
    partial.rename(final)
    print(f"staged {summary['songs']} songs, {summary['mib']:.1f} MiB: {summary['training_s'] / 3600:.2f} h training, "
          f"{summary['validation_s'] / 60:.1f} min validation ({summary['skipped']} unreadable or too short, skipped)")  # fmt: skip
    if args.wheels:
        whl = Path(args.out) / "whl"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "-d", str(whl), *WHEELS]  # fmt: skip
        if subprocess.run(cmd).returncode != 0:
            return _fail("pip download of the wheels failed (a package registry must be reachable)")
        print(f"wheels: {', '.join(sorted(p.name for p in whl.glob('*.whl')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
