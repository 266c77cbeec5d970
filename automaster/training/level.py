"""Fit the spectral restorer's level head offline, on many damaged crops of many songs.

The level head reads only statistics of its input (:func:`automaster.model.spectral.level_features`),
not the trunk, so its training set can be computed once: crops of clean songs are damaged afresh
(our chain and pedalboard's: two implementations, so the head learns the level of the original
master, not one chain's habits; and none, so a clip that already sounds mastered keeps its
level), and each gives its features and its target,
the loudness gap ``LUFS(clean) - LUFS(damaged)`` in LU (what ``automaster evaluate`` scores). Then
the head is fitted in seconds. Compared with fitting it through the waveform losses, this sees
hundreds of songs instead of a few minutes of them in the same CPU time.

    python -m automaster.training.level --audio CORPUS [--audio CORPUS ...] --out DIR
        [--crops-per-track 6] [--seconds 15] [--damages ours pedalboard] [--workers 2] [--config FILE]

Example ``(track, crop, damage)`` is drawn from generators seeded by ``(seed, track_id, crop)``;
the training split of every corpus trains, the validation split of every corpus validates, the
test split is never read. Writes a checkpoint (``DIR/model``: the level head alone, the project's
checkpoint format) and ``DIR/level_fit.json`` (errors in LU next to the identity and a constant).
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
from torch import nn

from automaster.audio import AudioError, FileError, audio_info, read_audio
from automaster.config import ConfigError, load_config
from automaster.degrade import degrade_clip, seed_for
from automaster.dsp.constants import MODEL_RATE
from automaster.dsp.loudness import integrated_loudness
from automaster.model.spectral import SpectralRestorer, level_features, mono_log_magnitude, stft_mono

DAMAGES = ("ours", "pedalboard", "none")  # none: the clean master itself (its level is right)
_QUIET_LUFS = -50.0  # a clean crop quieter than this is not a master: skipped


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
    """``clean`` ``(C, T)`` damaged by our chain or pedalboard's, drawn from ``(seed, key)``, or
    itself (``none``)."""
    if damage == "none":
        return clean
    if damage == "ours":
        return degrade_clip(clean, MODEL_RATE, seed, key).audio[0].numpy()
    from automaster.pedalboard_damage import pedalboard_degrade

    return pedalboard_degrade(clean, MODEL_RATE, seed, key).audio


def features_of(audio: np.ndarray) -> np.ndarray:
    """The level head's features ``(66,)`` of ``(C, T)`` audio at the model rate."""
    wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
    with torch.no_grad():
        _, mono = stft_mono(wave)
        return level_features(mono_log_magnitude(mono), wave)[0].numpy()


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
    """Run ``jobs`` (in a fork pool when ``workers`` > 1) -> arrays ``x``, ``y``, ``lufs``, ``damage``, ``track``."""
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
    }


def fit_head(model: SpectralRestorer, x: np.ndarray, y: np.ndarray, steps: int, lr: float, seed: int) -> list[float]:
    """Fit ``model.level_mlp`` to ``(x, y)`` with the L1 loss in LU (full batch, AdamW, cosine)."""
    torch.manual_seed(seed)
    head = model.level_mlp
    for layer in head:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.02)
    losses = []
    for _ in range(steps):
        pred = model.level_from_features(xs)
        loss = (pred - ys).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def predict(model: SpectralRestorer, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.level_from_features(torch.from_numpy(x)).numpy()


def errors(pred: np.ndarray, data: dict[str, np.ndarray], constant_lufs: float) -> dict[str, dict[str, float]]:
    """Mean absolute loudness error (LU) per damage: the head, the identity, a constant target."""
    out = {}
    for damage in sorted(set(data["damage"].tolist())):
        m = data["damage"] == damage
        y = data["y"][m]
        out[damage] = {
            "n": int(m.sum()),
            "head_lu": float(np.mean(np.abs(pred[m] - y))),
            "identity_lu": float(np.mean(np.abs(y))),
            "constant_lu": float(np.mean(np.abs(constant_lufs - data["lufs"][m] - y))),
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m automaster.training.level", description=__doc__.splitlines()[0])
    p.add_argument("--audio", action="append", required=True, metavar="FOLDER", help="clean corpus (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--crops-per-track", type=int, default=6)
    p.add_argument("--val-crops-per-track", type=int, default=3)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--damages", nargs="+", default=list(DAMAGES), choices=DAMAGES)
    p.add_argument("--clean-share", type=float, default=0.25,
                   help="share of the crops that are also examples undamaged (damage 'none', target 0 LU)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", help="a TOML/YAML/JSON config (its [model] section; the level head alone is kept)")
    return p.parse_args(argv)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.crops_per_track < 1 or args.seconds < 3 or args.workers < 1 or args.steps < 1:
        return _fail("--crops-per-track, --workers and --steps must be >= 1 and --seconds >= 3")
    if not 0.0 <= args.clean_share <= 1.0:
        return _fail(f"--clean-share must be in [0, 1], got {args.clean_share:g}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        return _fail(f"--out {args.out!r} is a file, not a folder")
    if "pedalboard" in args.damages:
        from automaster.pedalboard_damage import _pedalboard

        try:
            _pedalboard()
        except Exception as exc:  # noqa: BLE001 - the message says what to install
            return _fail(f"--damages pedalboard: {exc}")
    try:
        config = load_config(args.config, ["model.mode=spectral", "model.spectral_width=0"])
    except ConfigError as exc:
        return _fail(str(exc))
    from automaster.corpus import CorpusError, scan_corpus
    from automaster.model.checkpoint import save_checkpoint

    try:
        scans = [scan_corpus(root) for root in args.audio]
    except (CorpusError, OSError) as exc:
        return _fail(str(exc))
    damages = tuple(args.damages)
    t0 = time.time()
    sets = {}
    for split, crops in (("training", args.crops_per_track), ("validation", args.val_crops_per_track)):
        tracks = [t for scan in scans for t in scan.tracks if t.split == split]
        share = args.clean_share if split == "training" else 1.0  # validation: every crop clean too
        jobs = plan_jobs(tracks, crops, args.seconds, damages, args.seed if split == "training" else args.seed + 7919, share)
        try:
            sets[split] = make_examples(jobs, args.workers)
        except ValueError as exc:
            return _fail(f"--audio: the {split} split of {', '.join(args.audio)} ({len(tracks)} tracks): {exc}")
        print(f"{split}: {len(sets[split]['y'])} examples from {len(tracks)} tracks ({time.time() - t0:.0f} s)", flush=True)
    model = SpectralRestorer.from_config(config)
    train, val = sets["training"], sets["validation"]
    losses = fit_head(model, train["x"], train["y"], args.steps, args.lr, args.seed)
    constant = float(np.median(train["lufs"] + train["y"]))  # the training masters' median loudness
    report = {
        "settings": {k: v for k, v in vars(args).items()},
        "train_loss_lu": losses[-1],
        "constant_lufs": constant,
        "training": errors(predict(model, train["x"]), train, constant),
        "validation": errors(predict(model, val["x"]), val, constant),
        "seconds": time.time() - t0,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "level_examples.npz", **{f"{s}_{k}": v for s, d in sets.items() for k, v in d.items()})
    save_checkpoint(out / "model", model, config, epoch=0, extra={"level_fit": report["validation"]})
    (out / "level_fit.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["validation"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
