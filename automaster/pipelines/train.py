"""The training job: the paired dataset -> a trained cascade, on Ray Train.

The driver reads the dataset's splits with Ray Data, opens one MLflow run and starts a
``TorchTrainer``; each worker takes its shard, draws random fixed-length crops, and steps a DDP
model (gloo on CPU, nccl on GPU). The ranks share out the validation on full-length clips; rank
0 logs every epoch to MLflow and reports a checkpoint (model, optimiser, scheduler, epoch,
history, full config); Ray keeps the best K by the validation metric. A killed worker restarts
from the last checkpoint (``FailureConfig``) and re-running the same ``--run-name`` into the same
``--out`` resumes.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automaster import storage
from automaster.config import Config, from_dict
from automaster.training.pairs import read_meta

log = logging.getLogger(__name__)

MODEL_DIR = "model"


def monitor_metric(config: Config) -> str:
    """The λ-independent validation metric the scheduler and checkpoints rank by
    (:func:`automaster.training.loop.monitor_metric`)."""
    from automaster.training.loop import monitor_metric as core_monitor

    return core_monitor(config)


# ----------------------------------------------------------------------------- worker side


def _shard_source(config: Config, loop_config: dict[str, Any], rank: int, world: int):
    """The thesis pairs streamed from this worker's Ray Data shard; this rank's validation rows
    (evenly spread over the split when ``train.val_rows`` is set) decoded once."""
    import ray.train

    from automaster.dataset import decode_row
    from automaster.model.batches import batch_rows, rows_from_batch
    from automaster.training.sources import Source, pair_batches

    tc = config.train
    shard = ray.train.get_dataset_shard("train")
    val_rows = [r for raw in ray.train.get_dataset_shard("val").iter_batches(batch_size=1, batch_format="numpy") for r in batch_rows(raw)]
    if 0 < tc.val_rows < len(val_rows):  # the same rows every epoch
        val_rows = [val_rows[i] for i in np.linspace(0, len(val_rows) - 1, tc.val_rows).round().astype(int)]
    mine = [decode_row(r) for r in val_rows[rank::world]]

    class ShardSource(Source):
        def epoch_batches(self, epoch, rank, world, device, start=0):
            rng = np.random.default_rng([tc.seed, epoch, rank])
            for raw in shard.iter_batches(batch_size=tc.rows_per_batch, batch_format="numpy"):
                yield from pair_batches(rows_from_batch(raw), config, rng, device)

        def my_val_rows(self, rank, world):
            return mine

    return ShardSource(config=config, val_rows=[], means=loop_config["param_means"], steps_per_epoch=None)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the Ray-free core (:func:`automaster.training.loop.train`) with DDP
    (``wrap_model``) and a reporter that logs to MLflow on rank 0 and reports to Ray Train."""
    import ray.train
    import ray.train.torch

    from automaster.training.loop import LAST_DIR, train
    from automaster.training.sources import data_source, source_kind

    from automaster.pipelines.runners import route_logs
    from automaster.pipelines.runtime import quiet_ray_data

    verbose = loop_config.get("verbose", True)
    if loop_config.get("log_file"):
        route_logs(loop_config["log_file"], verbose, console=False)
    quiet_ray_data(verbose)
    config = from_dict(loop_config["config"])
    tc = config.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not tc.use_gpu:
        torch.set_num_threads(max(1, int(loop_config.get("threads_per_worker", 1))))
    if source_kind(config) == "pairs":
        source = _shard_source(config, loop_config, rank, world)
    else:
        source = data_source(loop_config["data"], config)
    work = Path(tempfile.mkdtemp(prefix="automaster-train-"))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker or a re-run of the same run name: resume
        with checkpoint.as_directory() as ckpt_dir:
            shutil.copytree(ckpt_dir, work / LAST_DIR)
        if rank == 0:
            log.info("resuming from Ray's checkpoint")
    # CPU (gloo): 4 MB buckets start the allreduce of the first gradients while the backward pass
    # still runs (the default 25 MB holds all 14 MB of this model's gradients: one allreduce at the
    # end); measured 3-4% faster per step with two ranks on two cores (BENCHMARKS.md, Training).
    ddp_kwargs = {} if tc.use_gpu else {"bucket_cap_mb": 4, "gradient_as_bucket_view": True}

    def wrap(model):
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs)

    mlflow = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        import mlflow

        mlflow.set_tracking_uri(loop_config["tracking_uri"])
        mlflow.start_run(run_id=loop_config["mlflow_run_id"])
    reporter = _RayReporter(config, mlflow, rank, world, resumed=checkpoint is not None)
    try:
        train(config, source, work, ray.train.torch.get_device(), reporter=reporter, wrap_model=wrap, rank=rank, world=world)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if mlflow is not None:
        mlflow.end_run()


class _RayReporter:
    """The core's reporter under Ray Train: MLflow on rank 0 (metrics, loss curve, spectrograms;
    MLflow's step is the epoch, or the step when validating every ``train.val_every`` steps),
    then ``ray.train.report`` on every rank with rank 0's checkpoint."""

    def __init__(self, config: Config, mlflow, rank: int, world: int, resumed: bool) -> None:
        self.config, self.mlflow, self.rank, self.world, self.resumed = config, mlflow, rank, world, resumed

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, figure: dict | None, history: list[dict]) -> None:
        import ray.train

        tc = self.config.train
        epoch = int(metrics["epoch"])
        if self.mlflow is not None:
            _log_epoch(self.mlflow, metrics, history, figure, epoch if tc.val_every <= 0 else int(metrics["step"]), self.config.audio)
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)
        if tc.fail_at_epoch >= 0 and epoch == tc.fail_at_epoch and self.rank == self.world - 1 and not self.resumed:
            raise RuntimeError(f"injected failure after epoch {epoch} (train.fail_at_epoch)")


def _log_epoch(mlflow, metrics: dict[str, float], history: list[dict], figure: dict | None, epoch: int, audio) -> None:
    """Per-epoch MLflow logging (rank 0): metrics, a loss curve and a spectrogram comparison."""
    from automaster.plots import loss_curve_png, mel_strip_png

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)
    mlflow.log_image(_png_array(loss_curve_png(history)), f"plots/loss_curve_epoch{epoch:03d}.png")
    if figure is not None:
        restored = figure["restored"] is not None
        mels = [figure["degraded"]] + ([figure["restored"]] if restored else []) + [figure["clean"]]
        titles = ["degraded (input)"] + (["restored (output)"] if restored else []) + ["clean (target)"]
        png = mel_strip_png(mels, audio.db_min, audio.db_max, titles=titles, frame_s=audio.hop_length / audio.sample_rate,
                            sample_rate=audio.sample_rate)  # fmt: skip
        mlflow.log_image(_png_array(png), f"plots/spectrograms_epoch{epoch:03d}.png")


def _png_array(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# ----------------------------------------------------------------------------- driver side


def _load_splits(data: str, config: Config):
    """Train and validation Ray Datasets, read from the files of their split only
    (:func:`automaster.training.pairs.split_files`); with fresh damage the workers read the
    dataset's originals themselves and ``train_ds`` is ``None``.

    Returns ``(train_ds, val_ds, counts, val_name, means)``; ``means`` are the training rows'
    mean parameter values (the predict-the-mean baseline of validation).
    """
    import ray

    from automaster.training.pairs import COLUMNS, split_files
    from automaster.training.sources import source_kind

    splits = split_files(data)

    def read(files: list[str]):
        # Materialised once (spilled to disk past the object store): training workers reserve
        # the CPUs, and a lazily read dataset would need free CPUs for its read tasks every epoch.
        return ray.data.read_parquet(files, columns=COLUMNS).materialize()

    train_ds = read(splits.train_files) if source_kind(config) == "pairs" else None
    return train_ds, read(splits.val_files), splits.counts, splits.val_name, splits.means


def _find_run(experiment: str, run_name: str) -> str | None:
    """The MLflow run of an earlier attempt of the same training run (to resume into it)."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.`automaster.train_name` = '{run_name}'", max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


def prepare_data(data: str, config: Config):
    """Checks and reads the demaster output ``data``: (train_ds, val_ds, counts, val_name, means)."""
    read_meta(data)
    train_ds, val_ds, counts, val_name, means = _load_splits(data, config)
    log.info("dataset %s: %s rows; validating on %r", data, counts, val_name)
    return train_ds, val_ds, counts, val_name, means


def worker_cpus(config: Config, cpus: float, workers: int | None = None) -> float:
    """CPUs per Ray Train worker that leave room for Ray Data's tasks.

    ``cpus`` is what the trainer may take (the cluster's, or a Tune trial's share); workers that
    take every CPU deadlock the data pipeline.
    """
    tc = config.train
    workers = workers or tc.workers
    return 1.0 if tc.use_gpu else max(0.25, min(float(tc.cpus_per_worker), (cpus - 0.5) / workers))


def build_trainer(
    config: Config,
    train_ds,
    val_ds,
    means: dict[str, float],
    *,
    name: str,
    storage_path: str,
    cpu_per_worker: float,
    mlflow_run_id: str | None,
    tracking_uri: str | None,
    callbacks: list | None = None,
    data: str | None = None,
    log_file: str | None = None,
    verbose: bool = True,
):
    """The ``TorchTrainer`` of one training run (``run_train`` and every Tune trial).

    ``train_ds`` is ``None`` with fresh damage: each worker then reads the originals of the
    demaster output ``data`` itself. ``log_file``: where the workers log (a path every node
    sees); ``verbose``: keep Ray Data's progress bars and the libraries' console logs.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = config.train
    loop_config = {
        "config": config.to_dict(),
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": tracking_uri,
        "param_means": means,
        "data": data,
        "threads_per_worker": max(1, int(cpu_per_worker)),
        "log_file": log_file,
        "verbose": verbose,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=tc.workers, use_gpu=tc.use_gpu, resources_per_worker={"CPU": cpu_per_worker}),
        datasets={"val": val_ds} if train_ds is None else {"train": train_ds, "val": val_ds},
        dataset_config=DataConfig(datasets_to_split=[] if train_ds is None else ["train"]),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=tc.keep_checkpoints,
                checkpoint_score_attribute=monitor_metric(config),
                checkpoint_score_order="min",
            ),
            callbacks=callbacks or None,
        ),
    )


def latest_checkpoint(out: str, run_name: str | None) -> Path | None:
    """The newest Ray Train checkpoint of the run ``run_name`` under ``out`` (what a re-run of the
    same run name resumes from), or None. Ray names them ``checkpoint_<timestamp>``."""
    if not run_name or not storage.is_local(out):
        return None
    found = sorted(p for p in Path(storage.local_path(out), "ray_results", run_name).glob("checkpoint_*") if p.is_dir())
    return found[-1] if found else None


def local_storage_path(path: str) -> str:
    """``path`` absolute (and created) when local; URIs unchanged (Ray needs absolute paths)."""
    if storage.is_local(path):
        path = str(Path(storage.local_path(path)).resolve())  # file:// URIs too
        Path(path).mkdir(parents=True, exist_ok=True)
    return path


def run_train(
    data: str,
    out: str,
    config: Config = Config(),
    *,
    tracking_uri: str | None = None,
    experiment: str = "automaster-train",
    run_name: str | None = None,
    ray_address: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train on the demaster output ``data``; checkpoints and the final model go under ``out``.

    Ray's, Ray Data's and MLflow's logs and the workers' output go to ``<out>/logs/train.log``
    (:func:`automaster.pipelines.batch.job_log_file`), not the console, unless ``verbose``.
    """
    import mlflow

    from automaster.pipelines import runtime, tracking
    from automaster.pipelines.batch import job_log_file
    from automaster.pipelines.runners import log_file_named_on_failure, route_logs

    read_meta(data)
    tc = config.train
    if tc.workers < 1:
        raise ValueError(f"train.workers must be >= 1, got {tc.workers}")
    run_name = run_name or f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    log_file = job_log_file(out, "train")
    route_logs(log_file, verbose)
    runtime.init_ray(ray_address, log_to_driver=verbose)
    runtime.quiet_ray_data(verbose)
    runtime.check_paths_visible({"--data": data, "--out": out})
    if tc.use_gpu and runtime.cluster_gpus() < tc.workers:
        raise ValueError(f"--gpu with {tc.workers} workers needs {tc.workers} GPUs; the cluster has {runtime.cluster_gpus()}")
    train_ds, val_ds, counts, _, means = prepare_data(data, config)

    cpu_per_worker = worker_cpus(config, runtime.cluster_cpus())
    storage_path = local_storage_path(storage.join(out, "ray_results"))

    uri = tracking.configure(tracking_uri, experiment)
    run_id = _find_run(experiment, run_name)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name) as run:
        if run_id is None:
            mlflow.set_tags({"automaster.job": "train", "automaster.train_name": run_name, "dataset": data,
                             "demaster_run_id": _demaster_run_id(data)})  # fmt: skip
            tracking.log_params({**config.to_dict(), "data": data, "out": out, "rows": counts})
        mlflow.end_run()  # rank 0 reopens it by id; the driver logs the final artifacts below
        trainer = build_trainer(
            config, train_ds, val_ds, means, name=run_name, storage_path=storage_path,
            cpu_per_worker=cpu_per_worker, mlflow_run_id=run.info.run_id, tracking_uri=uri, data=data,
            log_file=log_file if storage.is_local(out) else None, verbose=verbose,
        )  # fmt: skip
        t0 = time.time()
        with log_file_named_on_failure(log_file, "training"):
            result = trainer.fit()
        wall = time.time() - t0

    best = result.get_best_checkpoint(metric=monitor_metric(config), mode="min") or result.checkpoint
    if best is None:
        raise RuntimeError("training finished without a checkpoint")
    model_dir = storage.join(out, MODEL_DIR)
    with best.as_directory() as ckpt_dir:
        _export_model(ckpt_dir, model_dir)
        best_metrics = json.loads(_extra(ckpt_dir).get("metrics", "{}"))
    summary = {
        "run_name": run_name,
        "mlflow_run_id": run.info.run_id,
        "tracking_uri": uri,
        "model": model_dir,
        "best_metrics": best_metrics,
        "monitor": monitor_metric(config),
        "wall_s": wall,
        "rows": counts,
        "workers": tc.workers,
        "log_file": log_file,
    }
    storage.write_bytes_atomic(storage.join(out, "train_summary.json"), tracking.dumps(summary).encode())
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_metric("wall_s", wall)
        if storage.is_local(model_dir):
            mlflow.log_artifacts(model_dir, "model")
        tracking.log_json(summary, "train_summary.json")
    return summary


def _extra(ckpt_dir: str) -> dict[str, Any]:
    state = torch.load(Path(ckpt_dir) / "model.pt", map_location="cpu", weights_only=True)
    return state.get("extra", {})


def _export_model(ckpt_dir: str, model_dir: str) -> None:
    """The best checkpoint -> ``<out>/model`` (model.pt + config.json), written atomically per file."""
    storage.makedirs(model_dir)
    for name in ("model.pt", "config.json"):
        storage.write_bytes_atomic(storage.join(model_dir, name), (Path(ckpt_dir) / name).read_bytes())


def _demaster_run_id(data: str) -> str:
    path = storage.join(data, "summary.json")
    if storage.exists(path):
        return str(json.loads(storage.read_bytes(path)).get("mlflow_run_id", ""))
    return ""
