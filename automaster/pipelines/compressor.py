"""The compressor detector/estimator job: examples with Ray Data, the fit on Ray Train, MLflow.

1. **Examples, once, in parallel** (:func:`build_examples`): one Ray Data task per song makes its
   crops' damage and waveform statistics (:mod:`automaster.restoration.examples`); the set is
   cached in ``<out>/examples/<split>.npz`` beside the settings that made it, and reused by any
   later run (a fit, a search) with the same settings. A song that cannot be decoded is recorded
   (``errors`` in the summary) and skipped.
2. **The fit** (:func:`run_fit`): a ``TorchTrainer`` whose workers run the Ray-free loop
   (:func:`automaster.training.compressor.fit`) under DDP (gloo on CPU, nccl on GPU), each rank
   its share of every batch. The examples reach the workers through the object store (no path
   the workers must see). Rank 0 logs every epoch's metrics to the job's MLflow run and reports a
   checkpoint; Ray keeps the best by ``val/score``.
3. **The model** (``<out>/model``): the best checkpoint, with the detector's decision set for at
   most 5% false positives on validation, its figures in ``config.json``; logged as the run's
   artefact. :class:`automaster.training.compressor.NetCompressionModel` loads it.

The search over the network's settings is :mod:`automaster.pipelines.compressor_tune`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from automaster import storage
from automaster.training.compressor import MONITOR, NetConfig

log = logging.getLogger(__name__)

JOB = "train-compressor"
MODEL_DIR = "model"
SUMMARY = "compressor_summary.json"
NO_SCORE = 1e9  # val/score of a validation set with no compressed example


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """How the examples are made: crops per song of each split, their length, the seed."""

    crops: int = 50
    val_crops: int = 20
    seconds: float = 8.0
    seed: int = 21

    def check(self) -> None:
        for name, value in (("crops", self.crops), ("val_crops", self.val_crops)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 2.0 <= self.seconds <= 60.0:
            raise ValueError(f"seconds must be between 2 and 60, got {self.seconds}")


# ----------------------------------------------------------------------------- examples


def _song_examples(row: dict[str, Any], seed: int, crops: int, seconds: float) -> dict[str, Any]:
    """One Ray Data task: a song's examples as ``.npz`` bytes, or the reason it has none."""
    import torch

    from automaster.restoration.examples import to_bytes, track_examples

    torch.set_num_threads(1)  # a task holds one CPU
    try:
        data = track_examples(row["path"], row["track_id"], seed, crops, seconds)
        return {"track_id": row["track_id"], "npz": to_bytes(data), "error": ""}
    except Exception as exc:  # a bad file is recorded with its reason; the other songs go on
        return {"track_id": row["track_id"], "npz": b"", "error": f"{type(exc).__name__}: {exc}"[:300]}


def build_examples(corpora: list[str], split: str, spec: ExampleSpec, out: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The examples of ``split`` of every corpus (cached in ``<out>/examples/<split>.npz``).

    Returns ``(examples, info)``: ``info`` has the songs, rows, errors, wall time and whether the cache served.

    Raises:
        ValueError: the split has no song that gave an example.
    """
    import ray

    from automaster.corpus import scan_corpus
    from automaster.pipelines.runtime import cluster_cpus
    from automaster.restoration.examples import concat_examples, from_bytes, load_examples, save_examples

    crops = spec.crops if split == "training" else spec.val_crops
    seed = spec.seed if split == "training" else spec.seed + 7919  # validation crops drawn apart
    meta = {"corpora": sorted(corpora), "split": split, "crops": crops, "seconds": spec.seconds, "seed": seed, "version": 1}
    cache = Path(storage.local_path(out)) / "examples" / f"{split}.npz"
    t0 = time.time()
    songs_file = cache.with_name(cache.name + ".songs.json")  # which songs made it, and which could not be read
    cached = load_examples(cache, meta)
    if cached is not None:
        log.info("examples of %s: %d rows from %s", split, len(cached["key"]), cache)
        try:
            songs = json.loads(songs_file.read_text())
        except (OSError, ValueError):  # a cache from before the songs were kept beside it
            songs = {"errors": []}
        return cached, {"split": split, "rows": int(len(cached["key"])), "cached": True, "path": str(cache),
                        "songs_used": len(np.unique(cached["track"])), **({"songs": songs["songs"]} if "songs" in songs else {}),
                        "errors": [tuple(e) for e in songs["errors"]]}  # fmt: skip
    tracks = [t for root in corpora for t in scan_corpus(root).tracks if t.split == split]
    if not tracks:
        raise ValueError(f"no {split} songs in {', '.join(corpora)}")
    ds = ray.data.from_items([{"path": t.path, "track_id": t.track_id} for t in tracks], override_num_blocks=len(tracks))
    ds = ds.map(_song_examples, fn_kwargs={"seed": seed, "crops": crops, "seconds": spec.seconds}, num_cpus=1,
                compute=ray.data.TaskPoolStrategy(size=max(1, min(len(tracks), cluster_cpus()))))  # fmt: skip
    rows = ds.take_all()
    errors = sorted((r["track_id"], r["error"]) for r in rows if r["error"])
    data = concat_examples([from_bytes(r["npz"]) for r in rows if not r["error"]])
    if not len(data["key"]):
        raise ValueError(f"no usable {split} crop of {seconds_text(spec)} in {', '.join(corpora)} ({len(tracks)} songs; {len(errors)} unreadable)")
    save_examples(data, cache, meta)
    tmp = songs_file.with_name("." + songs_file.name + ".tmp")
    tmp.write_text(json.dumps({"songs": len(tracks), "errors": errors}))
    os.replace(tmp, songs_file)
    wall = time.time() - t0
    info = {"split": split, "songs": len(tracks), "songs_used": len(np.unique(data["track"])), "rows": int(len(data["key"])),
            "cached": False, "path": str(cache),
            "wall_s": wall, "examples_per_s": len(data["key"]) / max(wall, 1e-9), "errors": errors}  # fmt: skip
    log.info("examples of %s: %d rows from %d songs in %.0f s (%d unreadable)", split, info["rows"], len(tracks), wall, len(errors))
    return data, info


def seconds_text(spec: ExampleSpec) -> str:
    return f"{spec.seconds:g} s"


# ----------------------------------------------------------------------------- worker side


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the core loop under DDP; rank 0 logs to MLflow and checkpoints."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from automaster.pipelines.runners import route_logs
    from automaster.training.compressor import fit

    if loop_config.get("log_file"):
        route_logs(loop_config["log_file"], loop_config.get("verbose", False), console=False)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not loop_config["use_gpu"]:
        torch.set_num_threads(1)
    train, val = ray.get(loop_config["train_ref"]), ray.get(loop_config["val_ref"])
    config = NetConfig.from_dict(loop_config["net"])
    mlflow = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        import mlflow

        mlflow.set_tracking_uri(loop_config["tracking_uri"])
        mlflow.start_run(run_id=loop_config["mlflow_run_id"])

    def wrap(model):
        return ray.train.torch.prepare_model(model, move_to_device=True)

    try:
        fit(config, train, val, reporter=TrainReporter(config, mlflow, rank), wrap_model=wrap, rank=rank, world=world,
            device=ray.train.torch.get_device())  # fmt: skip
    finally:
        if mlflow is not None:
            mlflow.end_run()


class TrainReporter:
    """Every epoch: MLflow on rank 0 (step = epoch), then ``ray.train.report`` on every rank with rank 0's checkpoint."""

    def __init__(self, config: NetConfig, mlflow, rank: int) -> None:
        self.config, self.mlflow, self.rank = config, mlflow, rank

    def report(self, epoch: int, metrics: dict[str, float], net) -> None:
        import ray.train

        from automaster.training.compressor import save_net

        if self.mlflow is not None:
            self.mlflow.log_metrics(finite(metrics), step=epoch)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.rank == 0:
                save_net(tmp, net, self.config, {"metrics": metrics})
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(for_ray(metrics), checkpoint=ckpt)


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics MLflow can store (a NaN AUC of a one-class set is left out)."""
    return {k: float(v) for k, v in metrics.items() if np.isfinite(v)}


def for_ray(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics Ray ranks checkpoints and trials by: finite ones, and ``val/score`` always (a
    validation set without a compressed example has none: it ranks last). Ray keeps them as JSON,
    where a NaN comes back as None and breaks the ranking of a resumed run."""
    return {**finite(metrics), MONITOR: float(metrics[MONITOR]) if np.isfinite(metrics[MONITOR]) else NO_SCORE}


# ----------------------------------------------------------------------------- driver side


def prepare(corpora: list[str], out: str, spec: ExampleSpec, verbose: bool, ray_address: str | None, job: str,
            dashboard: bool = False) -> tuple[dict, dict, dict, str]:  # fmt: skip
    """Logs to ``<out>/logs/<job>.log``, Ray started or joined, the examples of both splits:
    ``(train, val, infos, log_file)``."""
    from automaster.pipelines import runtime
    from automaster.pipelines.batch import job_log_file
    from automaster.pipelines.runners import route_logs

    spec.check()
    log_file = job_log_file(out, job)
    route_logs(log_file, verbose)
    runtime.init_ray(ray_address, dashboard=dashboard, log_to_driver=verbose)
    runtime.quiet_ray_data(verbose)
    runtime.check_paths_visible({"--corpus": corpora[0], "--out": out, **{f"--corpus {i}": c for i, c in enumerate(corpora[1:], 2)}})
    train, train_info = build_examples(corpora, "training", spec, out)
    val, val_info = build_examples(corpora, "validation", spec, out)
    if set(train["track"]) & set(val["track"]):
        raise ValueError("the training and validation splits share songs")
    return train, val, {"training": train_info, "validation": val_info}, log_file


def export_model(ckpt_dir: str, model_dir: str, val: dict[str, np.ndarray], extra: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint -> ``model_dir`` with the decision for at most 5% false positives on ``val``; its figures."""
    from automaster.training.compressor import MAX_FPR, choose_decision, evaluate, load_net, predict, save_net

    net, meta = load_net(ckpt_dir)
    decision = choose_decision(net, val, MAX_FPR)
    prob, _ = predict(net, val["features"])
    label = val["kinds"] == "compressor"
    fired = prob >= decision
    figures = {**evaluate(net, val), "val/true_positive_rate": float(fired[label].mean()) if label.any() else float("nan"),
               "val/false_positive_rate": float(fired[~label].mean()) if (~label).any() else float("nan")}  # fmt: skip
    save_net(model_dir, net, NetConfig.from_dict(meta["net"]), {"decision": decision, "max_fpr": MAX_FPR, "validation": figures, **extra})
    return {"decision": decision, **figures}


def run_fit(
    corpora: list[str],
    out: str,
    config: NetConfig = NetConfig(),
    spec: ExampleSpec = ExampleSpec(),
    *,
    workers: int = 1,
    use_gpu: bool = False,
    tracking_uri: str | None = None,
    experiment: str = "automaster-compressor",
    run_name: str | None = None,
    ray_address: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Examples of ``corpora``' training and validation splits, then the fit on Ray Train; the
    model goes to ``<out>/model``, the summary to ``<out>/compressor_summary.json``."""
    import mlflow
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from automaster.pipelines import runtime, tracking
    from automaster.pipelines.runners import log_file_named_on_failure
    from automaster.pipelines.train import local_storage_path

    config.check()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    run_name = run_name or f"{JOB}-{time.strftime('%Y%m%d-%H%M%S')}"
    train, val, infos, log_file = prepare(corpora, out, spec, verbose, ray_address, JOB)
    if use_gpu and runtime.cluster_gpus() < workers:
        raise ValueError(f"--gpu with {workers} workers needs {workers} GPUs; the cluster has {runtime.cluster_gpus()}")
    cpus = runtime.cluster_cpus()
    per_worker = 1.0 if use_gpu else max(0.25, min(1.0, cpus / workers))
    uri = tracking.configure(tracking_uri, experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"automaster.job": JOB, "corpora": ",".join(corpora)})
        tracking.log_params({"net": config.to_dict(), "examples": dataclasses.asdict(spec), "workers": workers, "use_gpu": use_gpu,
                             "rows": {k: v["rows"] for k, v in infos.items()}, "monitor": MONITOR})  # fmt: skip
    loop_config = {"net": config.to_dict(), "train_ref": _put(train), "val_ref": _put(val), "use_gpu": use_gpu,
                   "mlflow_run_id": run.info.run_id, "tracking_uri": uri,
                   "log_file": log_file if storage.is_local(out) else None, "verbose": verbose}  # fmt: skip
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": per_worker}),
        run_config=RunConfig(name=run_name, storage_path=local_storage_path(storage.join(out, "ray_results")),
                             failure_config=FailureConfig(max_failures=1),
                             checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=MONITOR,
                                                                checkpoint_score_order="min")),
    )  # fmt: skip
    t0 = time.time()
    with log_file_named_on_failure(log_file, "training"):
        result = trainer.fit()
    wall = time.time() - t0
    best = result.get_best_checkpoint(metric=MONITOR, mode="min") or result.checkpoint
    if best is None:
        raise RuntimeError(f"training finished without a checkpoint (logs: {log_file})")
    model_dir = storage.join(out, MODEL_DIR)
    with best.as_directory() as ckpt_dir:
        figures = export_model(ckpt_dir, model_dir, val, {"mlflow_run_id": run.info.run_id, "examples": dataclasses.asdict(spec)})
    summary = {"run_name": run_name, "mlflow_run_id": run.info.run_id, "tracking_uri": uri, "experiment": experiment,
               "model": model_dir, "monitor": MONITOR, "best": figures, "wall_s": wall, "workers": workers,
               "examples": infos, "log_file": log_file}  # fmt: skip
    storage.write_bytes_atomic(storage.join(out, SUMMARY), tracking.dumps(summary).encode())
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_metrics({"wall_s": wall, **{f"best/{k}": v for k, v in finite(figures).items()}})
        mlflow.log_artifacts(model_dir, "model")
        tracking.log_json(summary, SUMMARY)
    return summary


def _put(data: dict[str, np.ndarray]):
    import ray

    return ray.put(data)
