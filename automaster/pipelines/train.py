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
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automaster import storage
from automaster.config import Config, from_dict
from automaster.dataset import DATASET_DIR, META_FILE
from automaster.effects.params import PARAMS

log = logging.getLogger(__name__)

MODEL_DIR = "model"
# Only the columns training reads (the dataset also holds paths and bookkeeping).
_COLUMNS = [
    "track_id", "variant", "split", "sample_rate", "n_samples", "n_mels", "n_frames",
    "mel_original_db", "mel_degraded_db", "wave_original", "wave_degraded",
] + [p.name for p in PARAMS]  # fmt: skip


def monitor_metric(config: Config) -> str:
    """The λ-independent validation metric the scheduler and checkpoints rank by.

    ``"auto"``: the mel L1 in dB of the restored mel when the model has a U-Net, else (params
    mode) the forecast error relative to the predict-the-mean baseline.
    """
    if config.train.monitor != "auto":
        return config.train.monitor
    return "val/mae_ratio" if config.model.mode == "params" else "val/mel_l1_db"


# ----------------------------------------------------------------------------- worker side


def _all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def _all_reduce_totals(totals: dict[str, tuple[float, int]], keys: list[str]) -> dict[str, tuple[float, int]]:
    """Every rank's validation ``(sum, count)`` per metric, added up over the ranks.

    ``keys`` (the same list on every rank) fixes the order; a rank without rows for a metric
    adds ``(0, 0)``. Every rank gets the same totals, so the scheduler steps alike everywhere.
    """
    import torch.distributed as dist

    unknown = sorted(set(totals) - set(keys))
    assert not unknown, f"validation metrics missing from the reduced keys: {unknown}"
    if not (dist.is_available() and dist.is_initialized()):
        return totals
    t = torch.tensor([totals.get(k, (0.0, 0)) for k in keys], dtype=torch.float64)  # (K, 2)
    dist.all_reduce(t)
    return {k: (total, int(n)) for k, (total, n) in zip(keys, t.tolist()) if n > 0}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the whole training loop, linear and visible (nanoGPT style)."""
    import ray.train
    import ray.train.torch

    from automaster.dataset import decode_row
    from automaster.model.batches import batch_rows, collate, random_crops, rows_from_batch
    from automaster.model.cascade import Cascade
    from automaster.model.checkpoint import load_training_state, save_checkpoint
    from automaster.model.losses import CompositeLoss
    from automaster.model.validate import metrics_from_totals, validation_totals

    config = from_dict(loop_config["config"])
    tc, audio = config.train, config.audio
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(tc.seed + rank)
    if not tc.use_gpu:
        torch.set_num_threads(max(1, int(loop_config.get("threads_per_worker", 1))))

    model = Cascade.from_config(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=tc.lr_factor, patience=tc.lr_patience)
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker or a re-run of the same run name: resume
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(Path(ckpt_dir) / "model.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            meta = load_training_state(ckpt_dir, optimizer, scheduler)
            start_epoch = int(meta["epoch"]) + 1
            history = json.loads(meta["extra"].get("history", "[]"))
        if rank == 0:
            log.info("resuming from epoch %d", start_epoch)
    # CPU (gloo): 4 MB buckets start the allreduce of the first gradients while the backward pass
    # still runs (the default 25 MB holds all 14 MB of this model's gradients: one allreduce at the
    # end); measured 3-4% faster per step with two ranks on two cores (BENCHMARKS.md, Training).
    ddp_kwargs = {} if tc.use_gpu else {"bucket_cap_mb": 4, "gradient_as_bucket_view": True}
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs)
    device = ray.train.torch.get_device()
    bare = model.module if hasattr(model, "module") else model
    loss_fn = CompositeLoss(config.loss, db_range=audio.db_max - audio.db_min)
    monitor = monitor_metric(config)

    mlflow = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        import mlflow

        mlflow.set_tracking_uri(loop_config["tracking_uri"])
        mlflow.start_run(run_id=loop_config["mlflow_run_id"])

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    means = loop_config["param_means"]
    crops_seen = 0
    for epoch in range(start_epoch, tc.epochs):
        model.train()
        rng = np.random.default_rng([tc.seed, epoch, rank])
        sums: dict[str, float] = {}
        steps, t0 = 0, time.perf_counter()
        for raw in train_shard.iter_batches(batch_size=tc.rows_per_batch, batch_format="numpy"):
            crops = random_crops(rows_from_batch(raw), tc.crop_frames, tc.crops_per_track, rng, audio)
            order = rng.permutation(len(crops))
            for i in range(0, len(crops), tc.batch_size):
                batch = collate([crops[j] for j in order[i : i + tc.batch_size]], audio, audio.sample_rate)
                batch = {k: v.to(device) for k, v in batch.items()}
                outputs = model(batch["mel_degraded"])
                total, terms = loss_fn(outputs, batch)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                for name, value in {"loss": total, **terms}.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                steps += 1
                crops_seen += len(batch["mel_degraded"])
        epoch_s = time.perf_counter() - t0
        train_metrics = _all_reduce_mean({f"train/{k}": v / max(steps, 1) for k, v in sums.items()})
        crops_per_s = _all_reduce_mean({"c": crops_seen / max(epoch_s, 1e-9)})["c"] * world
        crops_seen = 0

        # Validation is shared out: rank r takes rows r, r + world, ... (rank 0's first row, the
        # figure, is the split's first), and the (sum, count) totals are added up over the ranks.
        # Every rank sees the whole split; each decodes only its own rows.
        val_rows = [r for raw in val_shard.iter_batches(batch_size=1, batch_format="numpy") for r in batch_rows(raw)]
        if 0 < tc.val_rows < len(val_rows):  # evenly spread, the same rows every epoch
            val_rows = [val_rows[i] for i in np.linspace(0, len(val_rows) - 1, tc.val_rows).round().astype(int)]
        mine = [decode_row(r) for r in val_rows[rank::world]]
        totals, figure = validation_totals(bare, mine, audio, means, device)
        keys = [k for k in loop_config["val_keys"] if k != "val/mae_ratio"]  # a ratio of means, not a mean
        val_metrics = metrics_from_totals(_all_reduce_totals(totals, keys))
        scheduler.step(val_metrics.get(monitor, float("nan")))
        metrics = {
            **train_metrics,
            **{k: v for k, v in val_metrics.items() if not math.isnan(v)},
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "perf/crops_per_s": crops_per_s,
            "perf/epoch_s": epoch_s,
        }
        history.append({k: v for k, v in metrics.items() if k.startswith(("train/", "val/mel", "val/mrstft", "val/mae_ratio"))})

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(
                    tmp, bare, config,
                    extra={"history": json.dumps(history), "monitor": monitor, "metrics": json.dumps(metrics)},
                    optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                )  # fmt: skip
                ckpt = ray.train.Checkpoint.from_directory(tmp)
                if mlflow is not None:
                    _log_epoch(mlflow, metrics, history, figure, epoch, audio)
            ray.train.report(metrics, checkpoint=ckpt)
        if tc.fail_at_epoch >= 0 and epoch == tc.fail_at_epoch and rank == world - 1 and not checkpoint:
            raise RuntimeError(f"injected failure after epoch {epoch} (train.fail_at_epoch)")
    if mlflow is not None:
        mlflow.end_run()


def _log_epoch(mlflow, metrics: dict[str, float], history: list[dict], figure: dict | None, epoch: int, audio) -> None:
    """Per-epoch MLflow logging (rank 0): metrics, a loss curve and a spectrogram comparison."""
    from automaster.plots import loss_curve_png, mel_strip_png

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)
    mlflow.log_image(_png_array(loss_curve_png(history)), f"plots/loss_curve_epoch{epoch:03d}.png")
    if figure is not None:
        mels = [figure["degraded"]] + ([figure["restored"]] if figure["restored"] is not None else []) + [figure["clean"]]
        png = mel_strip_png(mels, audio.db_min, audio.db_max)
        mlflow.log_image(_png_array(png), f"plots/spectrograms_epoch{epoch:03d}.png")


def _png_array(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# ----------------------------------------------------------------------------- driver side


def _read_meta(data: str) -> dict[str, Any]:
    path = storage.join(data, META_FILE)
    if not storage.exists(path):
        raise ValueError(f"{data!r} is not a demaster output: {META_FILE} is missing (run `automaster demaster` first)")
    meta = json.loads(storage.read_bytes(path))
    names = [p["name"] for p in meta.get("params", [])]
    if names != [p.name for p in PARAMS]:
        raise ValueError(f"{data!r} was made with other effect parameters ({names}); re-run demaster")
    return meta


def _index_files(data: str) -> dict[str, dict[str, Any]]:
    """Per Parquet file of the dataset: its split, track ids, rows and parameter sums.

    Reads only the small columns (Parquet column projection): the mels and waveforms stay on
    disk until a training epoch streams them.
    """
    import pyarrow.parquet as pq

    files = [f for f in storage.list_files(storage.join(data, DATASET_DIR)) if f.endswith(".parquet")]
    if not files:
        raise ValueError(f"{data!r} holds no Parquet files under {DATASET_DIR}/")
    index: dict[str, dict[str, Any]] = {}
    names = [p.name for p in PARAMS]
    for f in files:
        fs, path = storage.resolve(f)
        table = pq.read_table(path, filesystem=fs, columns=["split", "track_id", *names])
        splits = set(table.column("split").to_pylist())
        if len(splits) > 1:
            raise ValueError(f"{f}: rows of several splits ({sorted(splits)}); one file must hold one track")
        sums = {n: float(sum(np.mean(v) for v in table.column(n).to_numpy(zero_copy_only=False))) for n in names}
        index[f] = {
            "split": splits.pop() if splits else "training",
            "tracks": sorted({str(t) for t in table.column("track_id").to_pylist()}),
            "rows": table.num_rows,
            "sums": sums,
        }
    return index


def _load_splits(data: str):
    """Train and validation Ray Datasets, read from the files of their split only (the split of
    each file comes from a read of its small columns; no pass over the mels to filter rows).

    Validation is the ``validation`` split, else ``test``; a corpus too small to have either
    (a folder of a few files) holds out its last ~10% of training tracks instead, with a warning.

    Returns ``(train_ds, val_ds, counts, val_name, means)``; ``means`` are the training rows'
    mean parameter values (the predict-the-mean baseline of validation).
    """
    import ray

    index = _index_files(data)
    by_split: dict[str, list[str]] = {s: [] for s in ("training", "validation", "test")}
    for f, info in index.items():
        by_split.setdefault(info["split"], []).append(f)
    counts = {s: sum(index[f]["rows"] for f in fs) for s, fs in by_split.items()}
    if counts["training"] == 0:
        raise ValueError(f"{data!r} has no training rows (splits: {counts})")
    train_files = by_split["training"]
    val_name = next((name for name in ("validation", "test") if counts[name]), None)
    if val_name is not None:
        val_files = by_split[val_name]
    else:
        ids = sorted({t for f in train_files for t in index[f]["tracks"]})
        if len(ids) < 2:
            raise ValueError(f"{data!r} has a single track: nothing to validate on (splits: {counts})")
        held = set(ids[-max(1, len(ids) // 10) :])
        log.warning("no validation or test rows in %s: holding out training tracks %s for validation", data, sorted(held))
        val_files = [f for f in train_files if set(index[f]["tracks"]) & held]
        train_files = [f for f in train_files if f not in val_files]
        if not train_files:
            raise ValueError(f"{data!r}: holding out {sorted(held)} leaves no training files (one file per track?)")
        counts.update(training=sum(index[f]["rows"] for f in train_files), validation=sum(index[f]["rows"] for f in val_files))
        val_name = "held-out training tracks"
    n = sum(index[f]["rows"] for f in train_files)
    means = {p.name: sum(index[f]["sums"][p.name] for f in train_files) / max(n, 1) for p in PARAMS}

    def read(files: list[str]):
        # Materialised once (spilled to disk past the object store): training workers reserve
        # the CPUs, and a lazily read dataset would need free CPUs for its read tasks every epoch.
        return ray.data.read_parquet(files, columns=_COLUMNS).materialize()

    return read(train_files), read(val_files), counts, val_name, means


def _val_keys(config: Config) -> list[str]:
    keys = ["val/mel_l1_db", "val/mel_l1_db_identity"]
    if config.model.mode != "restore":
        keys += ["val/mrstft", "val/mrstft_identity", "val/chain_mel_l1_db", "val/mae_ratio"]
        keys += [f"val/mae/{p.name}" for p in PARAMS] + [f"val/mae_baseline/{p.name}" for p in PARAMS]
    return keys


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
    _read_meta(data)
    train_ds, val_ds, counts, val_name, means = _load_splits(data)
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
):
    """The ``TorchTrainer`` of one training run (``run_train`` and every Tune trial)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = config.train
    loop_config = {
        "config": config.to_dict(),
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": tracking_uri,
        "param_means": means,
        "val_keys": _val_keys(config),
        "threads_per_worker": max(1, int(cpu_per_worker)),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=tc.workers, use_gpu=tc.use_gpu, resources_per_worker={"CPU": cpu_per_worker}),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),
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
) -> dict[str, Any]:
    """Train on the demaster output ``data``; checkpoints and the final model go under ``out``."""
    import mlflow

    from automaster.pipelines import runtime, tracking

    _read_meta(data)
    tc = config.train
    if tc.workers < 1:
        raise ValueError(f"train.workers must be >= 1, got {tc.workers}")
    run_name = run_name or f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    runtime.init_ray(ray_address)
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
            cpu_per_worker=cpu_per_worker, mlflow_run_id=run.info.run_id, tracking_uri=uri,
        )  # fmt: skip
        t0 = time.time()
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
