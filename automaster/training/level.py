"""Fit the level model offline: boosted trees on many damaged crops of many songs.

The level model (:mod:`automaster.model.level_trees`) reads only statistics of its input, so its
training set can be computed once: crops of clean songs are damaged afresh (our chain with every
effect and with each effect alone, pedalboard's chain: two implementations, so the model learns
the level of the original master, not one chain's habits; and none, so a clip that already
sounds mastered keeps its level), and each gives its features and its target, the loudness gap
``LUFS(clean) - LUFS(damaged)`` in LU (what ``automaster evaluate`` scores). Then the trees are
fitted in seconds (scikit-learn's histogram gradient boosting, absolute error).

    python -m automaster.training.level --audio CORPUS [--audio CORPUS ...] --out DIR
        [--crops-per-track 4,1] [--val-crops-per-track 3,2] [--seconds 15] [--workers 2]

``--crops-per-track``: one count, or one per ``--audio`` (a small corpus can give more crops a
song than a large one). Example ``(track, crop, damage)`` is drawn from generators seeded by
``(seed, track_id, crop)``; the training split of every corpus trains, the validation split of
every corpus validates, the test split is never read. Writes ``DIR/trees.npz`` (the model, which
``automaster master --level-model DIR`` takes), ``DIR/level_fit.json`` (errors in LU per damage
next to the identity and a constant) and ``DIR/level_examples.npz`` (the examples; a rerun with
the same settings reuses them and only refits).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automaster.audio import AudioError, FileError, audio_info, read_audio
from automaster.config import DAMAGE_EFFECTS
from automaster.degrade import degrade_clip, seed_for
from automaster.dsp.constants import MODEL_RATE
from automaster.dsp.loudness import integrated_loudness
from automaster.model.level_trees import LevelTrees, input_features

# ours: our chain, every effect; each of DAMAGE_EFFECTS: our chain with that effect alone (the
# others neutral, the same draw); pedalboard: another implementation; none: the clean master itself.
DAMAGES = ("ours", "pedalboard", "none", *DAMAGE_EFFECTS)
# gain: the master turned down (a mix with headroom, a quiet export), uniform over GAIN_RANGE_DB.
# Not a default: with it the trees cannot tell a quiet master from a damaged one, and every other
# damage's validation error grew (clean masters 0.29 -> 1.12 LU, compressor 1.85 -> 2.20; BENCHMARKS.md).
CHOICES = (*DAMAGES, "gain")
GAIN_RANGE_DB = (-18.0, -1.0)
_QUIET_LUFS = -50.0  # a clean crop quieter than this is not a master: skipped
# The trees: absolute error (the evaluation's loudness error), shallow and with large leaves
# (a leaf must hold many songs' crops, or it learns songs, not damage).
# No early stopping: every row trains, whatever their number (it would hold out a random tenth).
TREE_SETTINGS = {"loss": "absolute_error", "max_iter": 300, "learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 40,
                 "early_stopping": False}
_EXAMPLES_VERSION = 3
_ARRAYS = ("x", "y", "lufs", "damage", "track", "crop")


@dataclass(frozen=True)
class Job:
    """One example to make: a crop of ``path`` at ``offset_s``, damaged by ``damage``."""

    path: str
    track_id: str
    crop: int
    offset_s: float
    seconds: float
    damage: str
    seed: int


def damage_crop(clean: np.ndarray, damage: str, seed: int, key: str) -> np.ndarray:
    """``clean`` ``(C, T)`` damaged by our chain (every effect, or one of
    :data:`~automaster.config.DAMAGE_EFFECTS` alone) or pedalboard's, drawn from ``(seed, key)``,
    or itself (``none``)."""
    if damage == "none":
        return clean
    if damage == "gain":
        from automaster.degrade import make_generator

        low, high = GAIN_RANGE_DB
        gain_db = low + (high - low) * float(torch.rand(1, generator=make_generator(seed, f"gain:{key}")))
        return clean * np.float32(10.0 ** (gain_db / 20.0))
    if damage == "ours":
        return degrade_clip(clean, MODEL_RATE, seed, key).audio[0].numpy()
    if damage in DAMAGE_EFFECTS:
        return degrade_clip(clean, MODEL_RATE, seed, key, effects=(damage,)).audio[0].numpy()
    if damage == "pedalboard":
        from automaster.pedalboard_damage import pedalboard_degrade

        return pedalboard_degrade(clean, MODEL_RATE, seed, key).audio
    raise ValueError(f"unknown damage {damage!r}; expected one of {', '.join(CHOICES)}")


def features_of(audio: np.ndarray) -> np.ndarray:
    """The level model's features of ``(C, T)`` audio at the model rate (:func:`input_features`)."""
    return input_features(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None])[0].astype(np.float32)


def make_example(job: Job) -> tuple[np.ndarray, float, float] | None:
    """``(features, target LU, damaged LUFS)`` of one job, or None for an unusable crop."""
    torch.set_num_threads(1)
    try:
        clean, _ = read_audio(job.path, sample_rate=MODEL_RATE, mono=False, offset_s=job.offset_s, duration_s=job.seconds)
    except (AudioError, FileError, OSError, ValueError):
        return None
    if clean.shape[-1] < 0.9 * job.seconds * MODEL_RATE:
        return None
    clean = np.ascontiguousarray(clean[:2], dtype=np.float32)
    clean_lufs = integrated_loudness(clean, MODEL_RATE)
    if not math.isfinite(clean_lufs) or clean_lufs < _QUIET_LUFS:
        return None
    try:
        damaged = np.ascontiguousarray(damage_crop(clean, job.damage, job.seed, f"{job.track_id}:{job.crop}"), np.float32)
    except ValueError:  # a draw needing more headroom than the degrader allows
        return None
    lufs = integrated_loudness(damaged, MODEL_RATE)
    if not (math.isfinite(lufs) and np.isfinite(damaged).all()):
        return None
    return features_of(damaged), clean_lufs - lufs, lufs


def plan_jobs(
    tracks: list[Any], crops_per_track: int, seconds: float, damages: tuple[str, ...], seed: int, clean_share: float = 1.0,
) -> list[Job]:
    """Crop offsets for every track (uniform over the song, seeded by ``(seed, track_id)``), each
    crop damaged by every one of ``damages``; ``none`` (the clean crop) for a ``clean_share`` of
    the crops only (drawn from a generator of its own, so the offsets do not depend on it)."""
    jobs = []
    for track in tracks:
        try:
            duration = audio_info(track.path).duration_s
        except (AudioError, FileError, OSError):
            continue
        if duration < seconds:
            continue
        rng = np.random.default_rng(seed_for(seed, f"level:{track.track_id}"))
        clean_rng = np.random.default_rng(seed_for(seed, f"level-none:{track.track_id}"))
        for crop in range(crops_per_track):
            offset = float(rng.uniform(0.0, duration - seconds))
            with_clean = clean_rng.uniform() < clean_share
            jobs += [Job(track.path, track.track_id, crop, offset, seconds, damage, seed)
                     for damage in damages if damage != "none" or with_clean]
    return jobs


def make_examples(jobs: list[Job], workers: int) -> dict[str, np.ndarray]:
    """Run ``jobs`` (in a fork pool when ``workers`` > 1) -> arrays ``x``, ``y``, ``lufs``, ``damage``, ``track``, ``crop``."""
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(make_example, jobs, chunksize=4)
    else:
        results = [make_example(j) for j in jobs]
    kept = [(j, r) for j, r in zip(jobs, results) if r is not None]
    if not kept:
        raise ValueError("no usable crop: every one was unreadable, too short or silent")
    return {
        "x": np.stack([r[0] for _, r in kept]).astype(np.float32),
        "y": np.array([r[1] for _, r in kept], np.float32),
        "lufs": np.array([r[2] for _, r in kept], np.float32),
        "damage": np.array([j.damage for j, _ in kept]),
        "track": np.array([j.track_id for j, _ in kept]),
        "crop": np.array([j.crop for j, _ in kept], np.int32),
    }


def canonical(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``data``'s rows in one order (track, crop, damage), whatever order they were made in."""
    order = np.lexsort((data["damage"], data["crop"], data["track"]))
    return {k: v[order] for k, v in data.items()}


def fit_trees(x: np.ndarray, y: np.ndarray, seed: int, max_level_db: float = 24.0, meta: dict[str, Any] | None = None) -> LevelTrees:
    """Boosted trees (:data:`TREE_SETTINGS`) fitted to ``(x, y)``; deterministic for a seed."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    estimator = HistGradientBoostingRegressor(**TREE_SETTINGS, random_state=seed).fit(x.astype(np.float64), y)
    return LevelTrees.from_sklearn(estimator, x.shape[1], max_level_db, meta)


def errors(pred: np.ndarray, data: dict[str, np.ndarray], constant_lufs: float) -> dict[str, dict[str, float]]:
    """Mean absolute loudness error (LU) per damage: the model, the identity, a constant target."""
    out = {}
    for damage in sorted(set(data["damage"].tolist())):
        m = data["damage"] == damage
        y = data["y"][m]
        out[damage] = {
            "n": int(m.sum()),
            "model_lu": float(np.mean(np.abs(pred[m] - y))),
            "identity_lu": float(np.mean(np.abs(y))),
            "constant_lu": float(np.mean(np.abs(constant_lufs - data["lufs"][m] - y))),
        }
    return out


def _counts(text: str, n_corpora: int, flag: str) -> list[int]:
    """``"4"`` or ``"4,1"`` -> one count per corpus."""
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} takes whole numbers joined by commas, got {text!r}") from None
    if len(counts) == 1:
        counts *= n_corpora
    if len(counts) != n_corpora or min(counts) < 1:
        raise ValueError(f"{flag} needs one count >= 1, or one per --audio ({n_corpora}), got {text!r}")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m automaster.training.level", description=__doc__.splitlines()[0])
    p.add_argument("--audio", action="append", required=True, metavar="FOLDER", help="clean corpus (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--crops-per-track", default="6", help="training crops per song: one count, or one per --audio")
    p.add_argument("--val-crops-per-track", default="3", help="validation crops per song: one count, or one per --audio")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--damages", nargs="+", default=list(DAMAGES), choices=CHOICES)
    p.add_argument("--clean-share", type=float, default=1.0,
                   help="share of the training crops that are also examples undamaged (damage 'none', target 0 LU)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-level-db", type=float, default=24.0, help="the prediction's soft bound (dB)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _cached(path: Path, meta: dict[str, Any]) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """The examples saved at ``path`` by a run with the same settings but perhaps other damages
    (only the rows of ``meta["damages"]``), and the damages they hold; ``({}, [])`` if none."""
    try:
        with np.load(path, allow_pickle=False) as z:
            saved = json.loads(str(z["meta"]))
            if {k: v for k, v in saved.items() if k != "damages"} != {k: v for k, v in meta.items() if k != "damages"}:
                return {}, []
            have = [d for d in saved["damages"] if d in meta["damages"]]
            sets = {}
            for s in ("training", "validation"):
                keep = np.isin(z[f"{s}_damage"], have)
                sets[s] = {k: z[f"{s}_{k}"][keep] for k in _ARRAYS}
            return sets, have
    except (OSError, KeyError, ValueError):
        return {}, []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        crops = _counts(args.crops_per_track, len(args.audio), "--crops-per-track")
        val_crops = _counts(args.val_crops_per_track, len(args.audio), "--val-crops-per-track")
    except ValueError as exc:
        return _fail(str(exc))
    if args.seconds < 3 or args.workers < 1:
        return _fail("--workers must be >= 1 and --seconds >= 3")
    if not 0.0 <= args.clean_share <= 1.0:
        return _fail(f"--clean-share must be in [0, 1], got {args.clean_share:g}")
    if not args.max_level_db > 0:
        return _fail(f"--max-level-db must be > 0, got {args.max_level_db:g}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        return _fail(f"--out {args.out!r} is a file, not a folder")
    if "pedalboard" in args.damages:
        from automaster.pedalboard_damage import _pedalboard

        try:
            _pedalboard()
        except Exception as exc:  # noqa: BLE001 - the message says what to install
            return _fail(f"--damages pedalboard: {exc}")
    from automaster.corpus import CorpusError, scan_corpus

    try:
        scans = [scan_corpus(root) for root in args.audio]
    except (CorpusError, OSError) as exc:
        return _fail(str(exc))
    damages = tuple(args.damages)
    out = Path(args.out)
    cache = out / "level_examples.npz"
    meta = {"version": _EXAMPLES_VERSION, "corpora": [str(Path(a).resolve()) for a in args.audio], "crops": crops,
            "val_crops": val_crops, "seconds": args.seconds, "damages": list(damages), "clean_share": args.clean_share,
            "seed": args.seed}
    t0 = time.time()
    sets, have = _cached(cache, meta)
    missing = tuple(d for d in damages if d not in have)
    if have:
        print(f"examples: {cache} holds {', '.join(have)} (the same settings; delete it to make them afresh)", flush=True)
    if missing:
        for split, counts in (("training", crops), ("validation", val_crops)):
            share = args.clean_share if split == "training" else 1.0  # validation: every crop clean too
            seed = args.seed if split == "training" else args.seed + 7919
            jobs, n_tracks = [], 0
            for scan, count in zip(scans, counts):
                tracks = [t for t in scan.tracks if t.split == split]
                n_tracks += len(tracks)
                jobs += plan_jobs(tracks, count, args.seconds, missing, seed, share)
            try:
                made = make_examples(jobs, args.workers)
            except ValueError as exc:
                return _fail(f"--audio: the {split} split of {', '.join(args.audio)} ({n_tracks} tracks): {exc}")
            sets[split] = {k: np.concatenate([sets[split][k], made[k]]) for k in _ARRAYS} if split in sets else made
            print(f"{split}: {len(made['y'])} examples ({', '.join(missing)}) from {n_tracks} tracks ({time.time() - t0:.0f} s)", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".level_examples.tmp.npz"
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **{f"{s}_{k}": v for s, d in sets.items() for k, v in d.items()})
        tmp.replace(cache)
    sets = {s: canonical(d) for s, d in sets.items()}
    train, val = sets["training"], sets["validation"]
    t_fit = time.time()
    model = fit_trees(train["x"], train["y"], args.seed, args.max_level_db,
                      {"damages": list(damages), "seconds": args.seconds, "examples": int(len(train["y"]))})
    fit_s = time.time() - t_fit
    constant = float(np.median(train["lufs"] + train["y"]))  # the training masters' median loudness
    report = {
        "settings": {**{k: v for k, v in vars(args).items()}, "crops": crops, "val_crops": val_crops},
        "trees": {**TREE_SETTINGS, "trees": len(model.roots), "depth": model.depth, "features": model.n_features},
        "constant_lufs": constant,
        "tracks": {s: int(len(set(d["track"].tolist()))) for s, d in sets.items()},
        "training": errors(model.level_from_features(train["x"]), train, constant),
        "validation": errors(model.level_from_features(val["x"]), val, constant),
        "fit_seconds": fit_s,
        "seconds": time.time() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save(out)
    (out / "level_fit.json").write_text(json.dumps(report, indent=1))
    for damage, e in report["validation"].items():
        print(f"validation {damage:>10}: {e['model_lu']:.2f} LU (input {e['identity_lu']:.2f}; {e['n']} crops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
