"""Compression undone (issue 21): examples, fit and validation of the compressor detector/estimator.

    flock /tmp/heavy.lock python bench/compression_fit.py examples --split training --crops 200 --out /tmp/comp/train.npz
    flock /tmp/heavy.lock python bench/compression_fit.py examples --split validation --crops 60 --out /tmp/comp/val.npz
    python bench/compression_fit.py fit --train /tmp/comp/train.npz --val /tmp/comp/val.npz --model /tmp/comp/model
    flock /tmp/heavy.lock python bench/compression_fit.py restore --split validation --model /tmp/comp/model --crops 6

``examples``: ``--crops`` mono crops of ``--seconds`` per song of one split of the FMA root
(``--corpus``), each damaged as :func:`automaster.restoration.compression.make_example` draws it
(seeded by ``(seed, track, crop)``), features computed in ``--jobs`` processes; writes features,
kinds and targets, and prints examples/s. ``fit``: fits :class:`CompressionModel` and prints the
detector's accuracy/ROC AUC/false-positive rate and the estimator's MAE against predicting the
mean, on the other file's songs. ``restore``: each crop damaged by the compressor alone, EQ alone,
reverb alone and not at all; measures SI-SDR gain and MR-STFT ratio (against the clean crop, the
output at the input's RMS) of the model's undo, of the exact inverse with the true settings
(``oracle``) and of nothing (``identity``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from automaster.corpus import list_corpus  # noqa: E402
from automaster.restoration.examples import SAMPLE_RATE, concat_examples, crops_of, track_examples  # noqa: E402
from automaster.training.compressor import roc_auc  # noqa: E402


def _init_worker() -> None:
    import torch
    torch.set_num_threads(1)  # one core per process: torch's own threads only contend here


def _examples_task(job: tuple[str, str, int, int, float, float]) -> dict[str, np.ndarray]:
    from automaster.audio import AudioError
    from automaster.restoration.examples import empty_examples

    path, track_id, seed, n_crops, seconds, deadline = job
    try:
        return track_examples(path, track_id, seed, n_crops, seconds, deadline)
    except AudioError as e:
        print(f"skip {track_id}: {e}", file=sys.stderr)
        return empty_examples()


def tracks_of(corpus: str, split: str) -> list:
    return [t for t in list_corpus(corpus) if t.split == split]


def cmd_examples(args: argparse.Namespace) -> None:
    tracks = tracks_of(args.corpus, args.split)
    t0 = time.time()
    jobs = [(t.path, t.track_id, args.seed, args.crops, args.seconds, t0 + args.budget_s) for t in tracks]
    parts = []
    with get_context("fork").Pool(args.jobs, initializer=_init_worker) as pool:
        for part in pool.imap_unordered(_examples_task, jobs):
            parts.append(part)
    wall = time.time() - t0
    data = concat_examples(parts)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, **data)
    n = len(data["kinds"])
    kinds, counts = np.unique(data["kinds"], return_counts=True)
    print(json.dumps({"split": args.split, "songs": len(tracks), "examples": n, "wall_s": round(wall, 1),
                      "examples_per_s": round(n / wall, 2), "jobs": args.jobs, "load": os.getloadavg()[0],
                      "kinds": dict(zip(kinds.tolist(), counts.tolist()))}))


def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def evaluate_fit(model, data: dict[str, np.ndarray], train_targets_mean: np.ndarray) -> dict:
    from automaster.restoration.compression import TARGETS
    label = data["kinds"] == "compressor"
    prob = model.probability(data["features"])
    fired = prob >= model.decision
    out = {"examples": int(len(label)), "accuracy": float((fired == label).mean()), "roc_auc": roc_auc(prob, label),
           "true_positive_rate": float(fired[label].mean()), "false_positive_rate": float(fired[~label].mean())}
    out["false_positive_rate_by_kind"] = {k: float(fired[data["kinds"] == k].mean()) for k in np.unique(data["kinds"]) if k != "compressor"}
    est = model.estimate(data["features"][label])
    truth = data["targets"][label]
    out["mae"] = {}
    for i, name in enumerate(TARGETS):
        mae = float(np.abs(est[:, i] - truth[:, i]).mean())
        base = float(np.abs(train_targets_mean[i] - truth[:, i]).mean())
        out["mae"][name] = {"mae": round(mae, 4), "mean_predictor": round(base, 4), "ratio": round(mae / base, 3)}
    return out


def cmd_fit(args: argparse.Namespace) -> None:
    from automaster.restoration.compression import CompressionModel
    train, val = _load(args.train), _load(args.val)
    if set(train["track"]) & set(val["track"]):
        raise SystemExit("training and validation examples share songs")
    label = train["kinds"] == "compressor"
    t0, c0 = time.time(), time.process_time()
    model = CompressionModel.fit(train["features"], label, train["targets"], args.l2_detector, args.l2_estimator)
    fit_s, fit_cpu = time.time() - t0, time.process_time() - c0
    model.decision = args.decision
    if args.max_fpr is not None:  # the lowest decision whose false-positive rate on --val is at most max_fpr
        neg = np.sort(model.probability(val["features"][val["kinds"] != "compressor"]))[::-1]
        allowed = int(math.floor(args.max_fpr * len(neg)))
        model.decision = float(min(neg[allowed] + 1e-6, 1.0)) if allowed < len(neg) else 0.0
    mean = train["targets"][label].mean(axis=0)
    report = {"train_examples": int(len(label)), "train_songs": int(len(set(train["track"]))), "fit_s": round(fit_s, 2),
              "fit_cpu_s": round(fit_cpu, 2), "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
              "l2_detector": args.l2_detector, "l2_estimator": args.l2_estimator, "decision": model.decision, "max_fpr": args.max_fpr,
              "validation": evaluate_fit(model, val, mean), "training": evaluate_fit(model, train, mean)}
    if args.test:
        report["test"] = evaluate_fit(model, _load(args.test), mean)
    model.card = {"fit": report}
    if args.model:
        model.save(args.model)
    print(json.dumps(report, indent=1))


def load_model(folder: str):
    """A :class:`CompressionModel` (``weights.npz``) or a network from ``automaster train-compressor`` (``model.pt``)."""
    from automaster.restoration.compression import CompressionModel
    from automaster.training.compressor import NetCompressionModel
    return NetCompressionModel.load(folder) if os.path.exists(os.path.join(folder, "model.pt")) else CompressionModel.load(folder)


def _restore_task(job: tuple) -> list[dict]:
    import torch
    from automaster.effects.compressor import compressor_inverse
    from automaster.evaluation.metrics import mrstft_distance
    from automaster.dsp.metrics import si_sdr
    from automaster.restoration.compression import PEAK, make_example
    path, track_id, seed, n_crops, seconds, model_dir, kinds, overrides = job
    model = load_model(model_dir)
    for name, value in overrides.items():
        setattr(model, name, value)
    rows = []

    def at_rms(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return out * np.float32(math.sqrt(np.mean(ref.astype(np.float64) ** 2) / max(np.mean(out.astype(np.float64) ** 2), 1e-30)))

    from automaster.audio import AudioError
    try:
        crops = crops_of(path, track_id, seed, n_crops, seconds)
    except AudioError:
        return []
    for key, crop in crops:
        clean = crop * np.float32(PEAK / max(float(np.abs(crop).max()), 1e-9))
        for kind in kinds:
            try:
                ex = make_example(crop, SAMPLE_RATE, seed, key, kind)
            except ValueError:
                continue
            outs = {"identity": ex.audio}
            undone, rep = model.undo(ex.audio, SAMPLE_RATE)
            outs["model"] = undone
            if kind == "compressor":
                s = {k: v for k, v in ex.params.items() if k != "output_gain_db"}
                with torch.no_grad():
                    outs["oracle"] = at_rms(compressor_inverse(torch.from_numpy(ex.audio)[None], SAMPLE_RATE, **s)[0].numpy(), ex.audio)
            for name, out in outs.items():
                rows.append({"key": key, "kind": kind, "path": name, "fired": rep["fired"], "probability": rep["probability"],
                             "si_sdr_db": si_sdr(out, clean), "mrstft": mrstft_distance(out, clean)})
    return rows


def cmd_restore(args: argparse.Namespace) -> None:
    kinds = tuple(args.kinds.split(","))
    tracks = tracks_of(args.corpus, args.split)
    overrides = {k: getattr(args, k) for k in ("decision", "shrink") if getattr(args, k) is not None}
    jobs = [(t.path, t.track_id, args.seed, args.crops, args.seconds, args.model, kinds, overrides) for t in tracks]
    t0 = time.time()
    rows = []
    with get_context("fork").Pool(args.jobs, initializer=_init_worker) as pool:
        for part in pool.imap_unordered(_restore_task, jobs):
            rows += part
    summary = {}
    for kind in kinds:
        base = [r for r in rows if r["kind"] == kind and r["path"] == "identity"]
        for name in ("model", "oracle"):
            got = [r for r in rows if r["kind"] == kind and r["path"] == name]
            if not got:
                continue
            row = {"clips": len(got), "fired": float(np.mean([r["fired"] for r in got]))}
            if kind == "clean":  # the input is the reference: measure what firing did to it
                fired = [g["si_sdr_db"] for g in got if g["fired"]]
                row["si_sdr_db_when_fired"] = round(float(np.mean(fired)), 3) if fired else None
            else:
                row["d_si_sdr_db"] = round(float(np.mean([g["si_sdr_db"] - b["si_sdr_db"] for g, b in zip(got, base)])), 3)
                row["mrstft_ratio"] = round(float(np.mean([g["mrstft"] for g in got]) / np.mean([b["mrstft"] for b in base])), 3)
            summary[f"{kind}/{name}"] = row
    result = {"split": args.split, "overrides": overrides, "songs": len(tracks), "wall_s": round(time.time() - t0, 1), "load": os.getloadavg()[0], "summary": summary}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**result, "rows": rows}, f)
    print(json.dumps(result, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("examples", "restore"):
        s = sub.add_parser(name)
        s.add_argument("--corpus", default="/work/shared/data/fma_mini")
        s.add_argument("--split", default="training", choices=["training", "validation", "test"])
        s.add_argument("--crops", type=int, default=50, help="crops per song")
        s.add_argument("--seconds", type=float, default=8.0)
        s.add_argument("--seed", type=int, default=21)
        s.add_argument("--jobs", type=int, default=2)
        s.add_argument("--out", default="")
    sub.choices["examples"].add_argument("--budget-s", type=float, default=math.inf, help="stop making examples after this wall time")
    sub.choices["restore"].add_argument("--model", required=True)
    sub.choices["restore"].add_argument("--kinds", default="compressor,clean,eq,reverb")
    sub.choices["restore"].add_argument("--decision", type=float, default=None, help="override the model's decision")
    sub.choices["restore"].add_argument("--shrink", type=float, default=None, help="override the model's ratio shrink")
    f = sub.add_parser("fit")
    f.add_argument("--train", required=True)
    f.add_argument("--val", required=True)
    f.add_argument("--model", default="")
    f.add_argument("--l2-detector", type=float, default=1e-3)
    f.add_argument("--l2-estimator", type=float, default=10.0)
    f.add_argument("--decision", type=float, default=0.5)
    f.add_argument("--max-fpr", type=float, default=None, help="choose the decision for this false-positive rate on --val")
    f.add_argument("--test", default="", help="examples of a third split, reported with the fitted decision")
    args = p.parse_args(argv)
    {"examples": cmd_examples, "fit": cmd_fit, "restore": cmd_restore}[args.cmd](args)


if __name__ == "__main__":
    main()
