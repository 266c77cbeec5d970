"""The tuning job: Ray Tune over the loss weights (λ1, λ2, λ3) and the learning rate.

Every trial is one training run: a trial function builds the same ``TorchTrainer`` as
``run_train`` (``build_trainer``) with ``train.workers = tune.workers_per_trial`` and a
``TuneReportCallback`` that hands each epoch's metrics to Tune (PLATFORM.md, pattern B: the trial
itself holds 0.01 CPU, its Train workers share the rest but one CPU, kept for the trials' Ray Data
tasks). ASHA stops poor trials after
``grace_period`` epochs, ranking them by ``monitor_metric`` (``val/mel_l1_db``): a validation
distance that does not depend on the λs being searched (the weighted training loss does).

MLflow: one parent run for the search (tag ``automaster.job=tune``), one nested child run per
trial (named after the trial id) that rank 0 of the trial's trainer logs every epoch into. The
parent gets the summary, the best configuration (``best_config.json``) and the best model.
Outputs under ``out``: ``tune/<name>/`` (Tune's state: re-running the same command resumes),
``trials/<trial id>/`` (each trial's checkpoints), ``model/``, ``best_config.json``,
``tune_summary.json``.

Interrupting and resuming: Ctrl-C (SIGINT) makes Tune save its state and stop the trials; the job
then ends the parent run as KILLED and exits with :class:`SearchInterrupted`, writing no best
config. A crash (SIGKILL, a lost machine) leaves the state Tune last saved. Running the same
command again restores the search (``Tuner.restore``): finished trials are kept as they are, an
unfinished trial starts again and its trainer continues from the last epoch it checkpointed
(Ray Train resumes a run of the same name), and the MLflow parent run and child runs are reused.
Tune does not save ASHA's rungs: after a resume it ranks trials on the results it sees from
then on. ASHA counts epochs (``epochs_done``), not Tune's iterations, which restart at 1 in a
resumed trial.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

from automaster import storage
from automaster.config import Config, from_dict, save_config
from automaster.pipelines.train import (
    MODEL_DIR,
    _export_model,
    build_trainer,
    local_storage_path,
    monitor_metric,
    prepare_data,
    worker_cpus,
)

log = logging.getLogger(__name__)

# Searched config keys -> the TuneConfig bounds they are drawn between.
SEARCHED = {"loss.mel_l1": "mel_l1", "loss.params": "params", "loss.perceptual": "perceptual", "train.lr": "lr"}
BEST_CONFIG = "best_config.json"
SUMMARY = "tune_summary.json"
TRIAL_CPU = 0.01  # the trial function only drives its trainer; 0 is rejected, 1 deadlocks
# CPUs left free for the trials' Ray Data tasks: a task (reading a lazily read dataset, a map)
# takes a whole CPU, and a trainer whose dataset cannot start its tasks waits forever ("1/1 CPU",
# 0 rows) holding its workers. Seen here when training read its Parquet files lazily.
DATA_CPUS = 1.0
MIN_WORKER_CPU = 0.1  # a Train worker's CPU share is a scheduling figure: torch still runs 1 thread
EPOCHS = "epochs_done"  # ASHA's time attribute: epoch + 1, the same before and after a resume


class SearchInterrupted(KeyboardInterrupt):
    """The search stopped before its trials finished (Ctrl-C): run the same command to resume it."""


def search_space(config: Config) -> dict[str, Any]:
    """``{"loss.params": tune.loguniform(0.1, 10), ...}``; equal bounds give a fixed value (a
    loss weight may be fixed at 0 that way: ``tune.perceptual_min = tune.perceptual_max = 0``)."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, name in SEARCHED.items():
        low, high = getattr(config.tune, f"{name}_min"), getattr(config.tune, f"{name}_max")
        fixed_zero = low == high == 0 and key.startswith("loss.")
        if not (fixed_zero or 0 < low <= high):
            raise ValueError(f"tune.{name}_min/_max must satisfy 0 < min <= max (or both 0 for a loss weight), got {low}, {high}")
        space[key] = float(low) if low == high else tune.loguniform(low, high)
    return space


def apply_params(config: Config, params: dict[str, Any]) -> Config:
    """``config`` with the searched values of ``params`` (``{"loss.params": 2.0, ...}``) set."""
    data = config.to_dict()
    for key in SEARCHED:
        if key in params:
            section, name = key.split(".")
            data[section][name] = float(params[key])
    return from_dict(data)


# ----------------------------------------------------------------------------- trial side


def tune_trial(params: dict[str, Any], setup: dict[str, Any], train_ds=None, val_ds=None) -> None:
    """One Tune trial: an MLflow child run, then a TorchTrainer that reports every epoch to Tune."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    config = apply_params(from_dict(setup["config"]), params)
    run_id = _child_run(setup, trial_id, config, params)
    _report_checkpointed(storage.join(setup["trials_path"], trial_id))
    trainer = build_trainer(
        config, train_ds, val_ds, setup["means"], name=trial_id, storage_path=setup["trials_path"],
        cpu_per_worker=setup["cpu_per_worker"], mlflow_run_id=run_id, tracking_uri=setup["tracking_uri"],
        callbacks=[_epoch_report_callback()], data=setup.get("data"),
    )  # fmt: skip
    trainer.fit()


def _report_checkpointed(run_path: str) -> None:
    """A trial started again by a resumed search: hand Tune the last epoch its trainer checkpointed.

    Tune may never have seen it (the driver died between the checkpoint and Tune's bookkeeping),
    and a trainer that had checkpointed every epoch resumes past the end and reports nothing,
    which Tune rejects ("did not include the specified metric"). Reported first, the epoch lets
    ASHA rank the trial again (or stop it: every epoch done) before its trainer continues.
    """
    from ray import tune
    from ray.train import Result

    try:
        result = Result.from_path(run_path)
    except Exception:  # a first start: no run folder or no checkpoint yet
        return
    if not result.metrics or result.metrics.get("epoch") is None:
        return
    metrics = {**result.metrics, EPOCHS: int(result.metrics["epoch"]) + 1}
    if result.checkpoint is not None:
        metrics["checkpoint_path"] = result.checkpoint.path
    log.info("%s: its trainer checkpointed epoch %d before the search stopped", run_path, metrics["epoch"])
    tune.report(metrics)


def _epoch_report_callback():
    """``TuneReportCallback`` that adds ``epochs_done`` (``epoch + 1``) to every result.

    Tune numbers a trial's results from 1 each time the trial function starts, so a trial resumed
    at epoch 3 would report it as iteration 1; ASHA compares trials on ``epochs_done`` instead.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and "epoch" in metrics[0]:
                metrics = [{**metrics[0], EPOCHS: int(metrics[0]["epoch"]) + 1}, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return EpochReportCallback()


def _child_run(setup: dict[str, Any], trial_id: str, config: Config, params: dict[str, Any]) -> str:
    """The trial's nested MLflow run (reused when a restored trial starts again)."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from automaster.pipelines.tracking import flatten

    client = MlflowClient(setup["tracking_uri"])
    found = _trial_runs(client, setup["experiment_id"], setup["parent_run_id"], trial_id)
    if found:
        return found[0].info.run_id
    tags = {
        "mlflow.parentRunId": setup["parent_run_id"],
        "automaster.job": "tune-trial",
        "automaster.tune_name": setup["name"],
        "automaster.trial_id": trial_id,
    }
    run = client.create_run(setup["experiment_id"], run_name=trial_id, tags=tags)
    flat = {k: str(v)[:500] for k, v in flatten(config.to_dict()).items() if not k.startswith("tune.")}
    flat.update({f"search.{k}": str(v) for k, v in params.items()}, data=setup["data"])
    items = [Param(k, v) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def _trial_runs(client, experiment_id: str, parent_run_id: str, trial_id: str | None = None) -> list:
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    if trial_id:
        query += f" and tags.`automaster.trial_id` = '{trial_id}'"
    return client.search_runs([experiment_id], filter_string=query, max_results=10000)


# ----------------------------------------------------------------------------- driver side


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """``runtime.init_ray`` with the dashboard: a trial that ASHA stops kills its trainer's
    controller; Ray Train then frees the workers' placement group from a detached cleaner that
    finds dead controllers through the State API, which the dashboard serves. Without it every
    stopped trial leaks its CPUs and the search stalls."""
    from automaster.pipelines import runtime

    runtime.init_ray(address, num_cpus, dashboard=True)
    if not _state_api_ok():
        raise ValueError(
            "this Ray has no dashboard (State API): trials stopped early would leak their placement groups. "
            "Install ray[default] and start Ray with its dashboard (cluster/local.sh does), or let the job start its own"
        )


def _state_api_ok(wait_s: float = 30.0) -> bool:
    """Whether the State API answers (a dashboard just started may take some seconds)."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + wait_s
    while True:
        try:
            list_actors(limit=1, timeout=10, raise_on_missing_output=False)
            return True
        except Exception as exc:  # any failure of the State API means: no cleaner for stopped trials
            if time.monotonic() > deadline:
                log.debug("State API unavailable: %s", exc)
                return False
            time.sleep(1.0)



def _check(config: Config) -> None:
    tc = config.tune
    for name in ("samples", "workers_per_trial", "grace_period"):
        if getattr(tc, name) < 1:
            raise ValueError(f"tune.{name} must be >= 1, got {getattr(tc, name)}")
    if tc.epochs < 0 or tc.max_concurrent < 0:
        raise ValueError(f"tune.epochs and tune.max_concurrent must be >= 0, got {tc.epochs}, {tc.max_concurrent}")
    if tc.reduction_factor < 2:
        raise ValueError(f"tune.reduction_factor must be >= 2, got {tc.reduction_factor}")
    search_space(config)


def plan_resources(config: Config, cpus: int, gpus: int) -> tuple[int, float]:
    """(concurrent trials, CPUs per Train worker) for the cluster's ``cpus`` and ``gpus``.

    As many trials as the cluster holds (``tune.max_concurrent`` caps it), their workers sharing
    the CPUs but :data:`DATA_CPUS`, which Ray Data tasks in the trials need whole (2 CPUs: two
    1-worker trials at 0.49 CPU per worker, or one 2-worker trial at 0.495).
    """
    tc, w = config.tune, config.tune.workers_per_trial
    if config.train.use_gpu:
        if gpus < w:
            raise ValueError(f"train.use_gpu with {w} workers per trial needs {w} GPUs; the cluster has {gpus}")
        fit = gpus // w
        per_worker = 1.0
    else:
        fit = max(1, int(cpus // (w * min(1.0, config.train.cpus_per_worker))))
        per_worker = MIN_WORKER_CPU
    room = cpus - DATA_CPUS
    fit = min(fit, int(room // (w * per_worker + TRIAL_CPU))) if room > 0 else 1
    concurrent = max(1, min(tc.max_concurrent or fit, tc.samples))
    if config.train.use_gpu:
        return concurrent, worker_cpus(config, cpus, workers=w * concurrent)
    share = (room - concurrent * TRIAL_CPU) / (w * concurrent)
    if share < MIN_WORKER_CPU:
        log.warning("%s CPUs leave no whole CPU for the trials' data reading besides %d x %d Train workers: "
                    "trials may wait for their data; give Ray more CPUs or lower tune.max_concurrent",
                    cpus, concurrent, w)  # fmt: skip
        share = MIN_WORKER_CPU
    # rounded down: Ray counts CPUs in 1e-4 units, and the data CPU must stay whole
    return concurrent, math.floor(min(float(config.train.cpus_per_worker), share) * 1000) / 1000


def _find_parent(experiment_id: str, name: str, experiment_path: str) -> str | None:
    """The parent run of the search whose Tune state is ``experiment_path`` (the latest such)."""
    import mlflow

    query = f"tags.`automaster.job` = 'tune' and tags.`automaster.tune_name` = '{name}'"
    runs = mlflow.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], output_format="list")
    for run in runs:  # runs from before the tune_path tag existed match on the name alone
        if run.data.tags.get("automaster.tune_path", experiment_path) == experiment_path:
            return run.info.run_id
    return None


def _restorable(experiment_path: str) -> bool:
    """Whether Tune left a state to resume: ``tuner.pkl`` and at least one experiment state file.

    A driver killed in its first seconds leaves ``tuner.pkl`` alone, which ``Tuner.can_restore``
    accepts but ``Tuner.restore(...).fit()`` rejects; such a search starts over.
    """
    from ray import tune

    if not tune.Tuner.can_restore(experiment_path):
        return False
    try:
        names = [f.rsplit("/", 1)[-1] for f in storage.list_files(experiment_path, recursive=False)]
    except FileNotFoundError:
        return False
    if any(n.startswith("experiment_state") and n.endswith(".json") for n in names):
        return True
    log.warning("%s holds no experiment state (the search was stopped as it started): starting it again", experiment_path)
    return False


def run_tune(
    data: str,
    out: str,
    config: Config = Config(),
    *,
    tracking_uri: str | None = None,
    experiment: str = "automaster-tune",
    run_name: str | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Search λ1-λ3 and the learning rate on ``data``; the best config and model go under ``out``.

    Re-running with the same ``out`` and ``run_name`` (default ``"tune"``) resumes the search:
    finished trials are kept, unfinished and errored ones continue from their checkpoints.
    """
    import mlflow
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from automaster.pipelines import runtime, tracking

    _check(config)
    tc = config.tune
    epochs = tc.epochs or config.train.epochs
    name = run_name or "tune"
    base = config.replace(train=dataclasses.replace(config.train, epochs=epochs, workers=tc.workers_per_trial))
    monitor = monitor_metric(base)
    if monitor != "val/mel_l1_db":
        log.warning("tuning on %s: make sure it does not depend on the loss weights being searched", monitor)

    init_ray(ray_address)
    runtime.check_paths_visible({"--data": data, "--out": out})
    concurrent, cpu_per_worker = plan_resources(base, runtime.cluster_cpus(), runtime.cluster_gpus())
    train_ds, val_ds, counts, _, means = prepare_data(data, base)
    tune_path = local_storage_path(storage.join(out, "tune"))
    trials_path = local_storage_path(storage.join(out, "trials"))
    experiment_path = storage.join(tune_path, name)

    uri = tracking.configure(tracking_uri, experiment)
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    resume = _restorable(experiment_path)
    # a search resumed keeps its parent run; without Tune state to resume, it is a new search
    parent_id = _find_parent(experiment_id, name, experiment_path) if resume else None
    space = search_space(base)
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else name) as parent:
        if parent_id is None:
            mlflow.set_tags({"automaster.job": "tune", "automaster.tune_name": name, "automaster.tune_path": experiment_path,
                             "dataset": data})  # fmt: skip
            # the searched keys are per trial (child runs); the parent keeps their ranges (search.*)
            params = tracking.flatten(base.to_dict())
            params = {k: v for k, v in params.items() if k not in SEARCHED}
            tracking.log_params({**params, "data": data, "out": out, "rows": counts, "monitor": monitor,
                                 "search": {k: str(v) for k, v in space.items()}, "concurrent_trials": concurrent,
                                 "cpus_per_train_worker": cpu_per_worker})  # fmt: skip
        setup = {
            "config": base.to_dict(),
            "means": means,
            "tracking_uri": uri,
            "experiment_id": experiment_id,
            "parent_run_id": parent.info.run_id,
            "name": name,
            "data": data,
            "trials_path": trials_path,
            "cpu_per_worker": cpu_per_worker,
        }
        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, setup=setup, train_ds=train_ds, val_ds=val_ds), {"cpu": TRIAL_CPU}
        )
        t0 = time.time()
        if resume:
            log.info("resuming the search in %s with the settings it started with (another --run-name starts a new one)",
                     experiment_path)  # fmt: skip
            mlflow.set_tag("automaster.resumed", str(int(parent.data.tags.get("automaster.resumed", "0")) + 1))
            tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            log.info("search %r: %d trials x %d epochs, %d at a time, %.2f CPU per Train worker",
                     name, tc.samples, epochs, concurrent, cpu_per_worker)  # fmt: skip
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric=monitor,
                    mode="min",
                    num_samples=tc.samples,
                    scheduler=ASHAScheduler(time_attr=EPOCHS, max_t=epochs,
                                            grace_period=min(tc.grace_period, epochs), reduction_factor=tc.reduction_factor),
                    search_alg=BasicVariantGenerator(random_state=tc.seed, max_concurrent=concurrent),
                ),  # fmt: skip
                run_config=tune.RunConfig(name=name, storage_path=tune_path, failure_config=tune.FailureConfig(max_failures=1)),
            )
        grid = tuner.fit()
        wall = time.time() - t0

        unfinished = _unfinished_trials(experiment_path)
        if unfinished or (not resume and len(grid) < tc.samples):
            mlflow.end_run("KILLED")
            raise SearchInterrupted(
                f"the search stopped with {unfinished} of {len(grid)} trials unfinished ({tc.samples} planned); "
                f"its state is in {experiment_path}: run the same command again to resume it"
            )
        trials = _trials(grid, monitor, epochs, trials_path)
        _close_child_runs(uri, experiment_id, parent.info.run_id, trials, epochs, monitor)
        ok = [t for t in trials if t["best"] is not None]
        if not ok:
            errors = "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials if t["error"])
            raise RuntimeError(f"no trial reported {monitor} ({errors or 'no trials ran'})")
        best = min(ok, key=lambda t: t["best"])
        best_config = apply_params(config, best["params"])
        best_path = storage.join(out, BEST_CONFIG)
        model_dir = storage.join(out, MODEL_DIR)
        if best["checkpoint"] and Path(best["checkpoint"]).is_dir():
            _export_model(best["checkpoint"], model_dir)
        else:
            log.warning("the best trial's checkpoint %s is not on this machine; no model/ exported", best["checkpoint"])
            model_dir = None
        epochs_run = sum(t["epochs"] for t in trials)
        epochs_full = epochs * len(trials)
        summary = {
            "name": name,
            "mlflow_run_id": parent.info.run_id,
            "tracking_uri": uri,
            "experiment": experiment,
            "monitor": monitor,
            "best_trial": best["trial_id"],
            "best_params": best["params"],
            "best_metric": best["best"],
            "best_epoch": best["best_epoch"],
            "best_config": best_path,
            "model": model_dir,
            "trials": trials,
            "trials_run": len(trials),
            "trials_stopped_early": sum(t["status"] == "stopped_early" for t in trials),
            "trials_failed": sum(t["status"] == "error" for t in trials),
            "epochs_run": epochs_run,
            "epochs_full": epochs_full,
            "compute_saved": 1.0 - epochs_run / max(epochs_full, 1),
            "wall_s": wall,
            "concurrent_trials": concurrent,
            "workers_per_trial": tc.workers_per_trial,
            "tune_path": experiment_path,
        }
        if storage.is_local(best_path):
            Path(best_path).parent.mkdir(parents=True, exist_ok=True)
            save_config(best_config, best_path)
            mlflow.log_artifact(best_path)
        else:
            storage.write_bytes_atomic(best_path, (tracking.dumps(best_config.to_dict()) + "\n").encode())
            tracking.log_json(best_config.to_dict(), BEST_CONFIG)
        storage.write_bytes_atomic(storage.join(out, SUMMARY), tracking.dumps(summary).encode())
        mlflow.log_metrics({
            f"best/{monitor}": best["best"], "trials_run": len(trials), "trials_stopped_early": summary["trials_stopped_early"],
            "trials_failed": summary["trials_failed"], "epochs_run": epochs_run, "epochs_full": epochs_full,
            "compute_saved": summary["compute_saved"], "wall_s": wall,
        })  # fmt: skip
        mlflow.set_tags({"automaster.best_trial": best["trial_id"], **{f"best.{k}": str(v) for k, v in best["params"].items()}})
        if model_dir and storage.is_local(model_dir):
            mlflow.log_artifacts(model_dir, "model")
        tracking.log_json(summary, SUMMARY)
    return summary


def _unfinished_trials(experiment_path: str) -> int:
    """Trials that Tune's saved state has neither finished nor failed: > 0 after a Ctrl-C.

    Read from the state Tune saved last, not from ``fit()``'s results: when interrupted, Tune saves
    the trials as they were (running, pending), then stops them and marks them terminated in memory.
    """
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(experiment_path).trials
    return sum(t.status not in ("TERMINATED", "ERROR") for t in trials)


def _trials(grid, monitor: str, epochs: int, trials_path: str) -> list[dict[str, Any]]:
    """One dict per trial: searched values, best metric, its checkpoint, epochs run, status.

    A trial's epochs are what Tune received merged with the checkpoints its trainer kept (Ray
    Train keeps the best ``train.keep_checkpoints`` by the monitored metric): a driver killed
    between a checkpoint and Tune's bookkeeping, then resumed, leaves epochs only the trainer saw.
    """
    out = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        rows = _epoch_rows(result.metrics_dataframe, monitor)
        for row in _checkpoint_rows(storage.join(trials_path, str(trial_id)), monitor):
            rows[row["epoch"]] = {**rows.get(row["epoch"], {}), **row}
        best_row = min(rows.values(), key=lambda r: r[monitor]) if rows else None
        ran = max(rows) + 1 if rows else 0
        if result.error is not None:
            status = "error"
        elif ran < epochs:
            status = "stopped_early"
        else:
            status = "completed"
        out.append({
            "trial_id": str(trial_id),
            "params": {k: float(result.config[k]) for k in SEARCHED if k in (result.config or {})},
            "best": float(best_row[monitor]) if best_row else None,
            "best_epoch": int(best_row["epoch"]) if best_row else None,
            "checkpoint": best_row.get("checkpoint_path") if best_row else None,
            "epochs": ran,
            "status": status,
            "error": str(result.error).splitlines()[0][:300] if result.error is not None else None,
        })  # fmt: skip
    return sorted(out, key=lambda t: t["trial_id"])


def _epoch_rows(history, monitor: str) -> dict[int, dict[str, Any]]:
    """Tune's results of one trial by epoch (the last one of an epoch reported twice)."""
    rows: dict[int, dict[str, Any]] = {}
    if history is None or monitor not in history or "epoch" not in history:
        return rows
    for r in history.to_dict("records"):
        if r.get(monitor) is None or math.isnan(r[monitor]) or r.get("epoch") is None or math.isnan(r["epoch"]):
            continue
        rows[int(r["epoch"])] = {"epoch": int(r["epoch"]), monitor: float(r[monitor]), "checkpoint_path": r.get("checkpoint_path")}
    return rows


def _checkpoint_rows(run_path: str, monitor: str) -> list[dict[str, Any]]:
    """The epochs a trial's trainer checkpointed (``ray.train.Result.from_path``), with their paths."""
    from ray.train import Result

    try:
        result = Result.from_path(run_path)
    except Exception as exc:  # no checkpoint yet, or a run folder Ray Train cannot read
        log.debug("no Ray Train checkpoints in %s: %s", run_path, exc)
        return []
    rows = []
    for checkpoint, metrics in result.best_checkpoints or []:
        if metrics.get(monitor) is not None and metrics.get("epoch") is not None and not math.isnan(metrics[monitor]):
            rows.append({"epoch": int(metrics["epoch"]), monitor: float(metrics[monitor]), "checkpoint_path": checkpoint.path})
    return rows


def _close_child_runs(
    uri: str, experiment_id: str, parent_run_id: str, trials: list[dict[str, Any]], epochs: int, monitor: str
) -> None:
    """Mark each child run with its trial's outcome; end the ones a stopped trial left RUNNING.

    A trial keeps training while Tune decides to stop it, so it may finish (and log) one more
    epoch than it reported: the epochs its run logged are the compute it really spent.
    """
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    by_trial = {t["trial_id"]: t for t in trials}
    for run in _trial_runs(client, experiment_id, parent_run_id):
        trial = by_trial.get(run.data.tags.get("automaster.trial_id", ""))
        if trial is None:
            continue
        # an epoch logged twice (the driver died after MLflow saw it, before its checkpoint): the last
        history = list({m.step: m for m in sorted(client.get_metric_history(run.info.run_id, monitor),
                                                  key=lambda m: (m.step, m.timestamp))}.values())  # fmt: skip
        trial["epochs"] = max(trial["epochs"], len(history))
        if trial["status"] == "stopped_early" and trial["epochs"] >= epochs:
            trial["status"] = "completed"
        client.set_tag(run.info.run_id, "automaster.trial_status", trial["status"])
        client.log_metric(run.info.run_id, "epochs_run", trial["epochs"])
        if history:
            client.log_metric(run.info.run_id, f"best/{monitor}", min(m.value for m in history))
        if run.info.status == "RUNNING":  # a stopped trial: it ended with its last logged epoch
            end = max((m.timestamp for m in history), default=None)
            client.set_terminated(run.info.run_id, "FAILED" if trial["status"] == "error" else "FINISHED", end_time=end)
