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
``tune_summary.json``, ``logs/tune.log`` (Ray's, Ray Data's, Ray Tune's and MLflow's logs and
the workers' output, which stay off the console unless ``verbose``).

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
from automaster.pipelines.runners import log_file_named_on_failure, stdout_to_log_file
from automaster.pipelines.train import (
    MODEL_DIR,
    _export_model,
    build_trainer,
    local_storage_path,
    monitor_metric,
    prepare_data,
    worker_cpus,
)
from automaster.pipelines.tune_state import (
    EPOCHS,
    child_run,
    close_child_runs,
    find_parent,
    report_checkpointed,
    restorable,
    trial_rows,
    unfinished_trials,
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

    from automaster.pipelines.runners import route_logs

    if setup.get("log_file"):  # the trial's own logs (MLflow's) to the job's log file, as its workers'
        route_logs(setup["log_file"], setup["verbose"], console=False)
    trial_id = tune.get_context().get_trial_id()
    config = apply_params(from_dict(setup["config"]), params)
    run_id = child_run(setup, trial_id, config, params)
    report_checkpointed(storage.join(setup["trials_path"], trial_id))
    trainer = build_trainer(
        config, train_ds, val_ds, setup["means"], name=trial_id, storage_path=setup["trials_path"],
        cpu_per_worker=setup["cpu_per_worker"], mlflow_run_id=run_id, tracking_uri=setup["tracking_uri"],
        callbacks=[_epoch_report_callback()], data=setup.get("data"), log_file=setup.get("log_file"),
        verbose=setup.get("verbose", True),
    )  # fmt: skip
    trainer.fit()


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


# ----------------------------------------------------------------------------- driver side


def init_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """``runtime.init_ray`` with the dashboard: a trial that ASHA stops kills its trainer's
    controller; Ray Train then frees the workers' placement group from a detached cleaner that
    finds dead controllers through the State API, which the dashboard serves. Without it every
    stopped trial leaks its CPUs and the search stalls. ``log_to_driver``: the workers' output on
    this console."""
    from automaster.pipelines import runtime

    runtime.init_ray(address, num_cpus, dashboard=True, log_to_driver=log_to_driver)
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


def check_search(config: Config) -> None:
    """``ValueError`` naming the first bad ``tune.*`` setting (run before anything starts)."""
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


@dataclasses.dataclass
class _Search:
    """What the steps of :func:`run_tune` share: the search's settings, paths and data."""

    name: str
    config: Config  # as given: the best config is this one with the best trial's values
    base: Config  # the trials' config: train.epochs and train.workers set from tune.*
    epochs: int
    monitor: str
    space: dict[str, Any]
    concurrent: int
    cpu_per_worker: float
    tune_path: str
    trials_path: str
    experiment_path: str
    log_file: str  # <out>/logs/tune.log: what stays off the console unless verbose
    verbose: bool
    train_ds: Any
    val_ds: Any
    counts: Any
    means: Any


def run_tune(
    data: str,
    out: str,
    config: Config = Config(),
    *,
    tracking_uri: str | None = None,
    experiment: str = "automaster-tune",
    run_name: str | None = None,
    ray_address: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Search λ1-λ3 and the learning rate on ``data``; the best config and model go under ``out``.

    Re-running with the same ``out`` and ``run_name`` (default ``"tune"``) resumes the search:
    finished trials are kept, unfinished and errored ones continue from their checkpoints.
    Ray's, Ray Data's, Ray Tune's and MLflow's logs and the workers' output go to
    ``<out>/logs/tune.log`` (:func:`automaster.pipelines.batch.job_log_file`), not the console,
    unless ``verbose``; a failure names that file.
    """
    import mlflow

    from automaster.pipelines import tracking

    search = _setup(data, out, config, run_name or "tune", ray_address, verbose)
    uri = tracking.configure(tracking_uri, experiment)
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    resume = restorable(search.experiment_path)
    # a search resumed keeps its parent run; without Tune state to resume, it is a new search
    parent_id = find_parent(experiment_id, search.name, search.experiment_path) if resume else None
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else search.name) as parent:
        if parent_id is None:
            _log_new_parent(search, data, out)
        trainable = _trainable(search, data, uri, experiment_id, parent.info.run_id)
        t0 = time.time()
        tuner = _restored_tuner(search, trainable, parent) if resume else _new_tuner(search, trainable)
        with log_file_named_on_failure(search.log_file, "tuning"):
            with stdout_to_log_file(search.log_file, search.verbose):  # Ray Tune's tables and trial lines
                grid = tuner.fit()
            wall = time.time() - t0
            _raise_if_interrupted(grid, search, resume)
            trials = trial_rows(grid, search.monitor, search.epochs, search.trials_path, SEARCHED)
            close_child_runs(uri, experiment_id, parent.info.run_id, trials, search.epochs, search.monitor)
            best = _best_trial(trials, search.monitor)
        model_dir = _export_best_model(best, out)
        summary = _summary(search, best, trials, wall, model_dir, out,
                           run_id=parent.info.run_id, tracking_uri=uri, experiment=experiment)  # fmt: skip
        _write_outputs(search, best, summary, out, model_dir)
    return summary


def _setup(data: str, out: str, config: Config, name: str, ray_address: str | None, verbose: bool) -> _Search:
    """Check the config, route the logs, start (or join) Ray, plan the trials' resources and read the data."""
    from automaster.pipelines import runtime
    from automaster.pipelines.batch import job_log_file
    from automaster.pipelines.runners import route_logs

    check_search(config)
    tc = config.tune
    epochs = tc.epochs or config.train.epochs
    base = config.replace(train=dataclasses.replace(config.train, epochs=epochs, workers=tc.workers_per_trial))
    monitor = monitor_metric(base)
    if monitor != "val/mel_l1_db":
        log.warning("tuning on %s: make sure it does not depend on the loss weights being searched", monitor)

    log_file = job_log_file(out, "tune")
    route_logs(log_file, verbose)
    init_ray(ray_address, log_to_driver=verbose)
    runtime.quiet_ray_data(verbose)
    runtime.check_paths_visible({"--data": data, "--out": out})
    concurrent, cpu_per_worker = plan_resources(base, runtime.cluster_cpus(), runtime.cluster_gpus())
    train_ds, val_ds, counts, _, means = prepare_data(data, base)
    tune_path = local_storage_path(storage.join(out, "tune"))
    return _Search(
        name=name, config=config, base=base, epochs=epochs, monitor=monitor, space=search_space(base),
        concurrent=concurrent, cpu_per_worker=cpu_per_worker, tune_path=tune_path,
        trials_path=local_storage_path(storage.join(out, "trials")), experiment_path=storage.join(tune_path, name),
        log_file=log_file, verbose=verbose, train_ds=train_ds, val_ds=val_ds, counts=counts, means=means,
    )  # fmt: skip


def _log_new_parent(search: _Search, data: str, out: str) -> None:
    """Tag a new search's parent run and log its parameters."""
    import mlflow

    from automaster.pipelines import tracking

    mlflow.set_tags({"automaster.job": "tune", "automaster.tune_name": search.name,
                     "automaster.tune_path": search.experiment_path, "dataset": data})  # fmt: skip
    # the searched keys are per trial (child runs); the parent keeps their ranges (search.*)
    params = tracking.flatten(search.base.to_dict())
    params = {k: v for k, v in params.items() if k not in SEARCHED}
    tracking.log_params({**params, "data": data, "out": out, "rows": search.counts, "monitor": search.monitor,
                         "search": {k: str(v) for k, v in search.space.items()}, "concurrent_trials": search.concurrent,
                         "cpus_per_train_worker": search.cpu_per_worker})  # fmt: skip


def _trainable(search: _Search, data: str, tracking_uri: str, experiment_id: str, parent_run_id: str):
    """:func:`tune_trial` bound to the search's setup and datasets, holding :data:`TRIAL_CPU`."""
    from ray import tune

    setup = {
        "config": search.base.to_dict(),
        "means": search.means,
        "tracking_uri": tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "name": search.name,
        "data": data,
        "trials_path": search.trials_path,
        "cpu_per_worker": search.cpu_per_worker,
        "log_file": search.log_file if storage.is_local(search.trials_path) else None,  # a path the workers see
        "verbose": search.verbose,
    }
    bound = tune.with_parameters(tune_trial, setup=setup, train_ds=search.train_ds, val_ds=search.val_ds)
    return tune.with_resources(bound, {"cpu": TRIAL_CPU})


def _restored_tuner(search: _Search, trainable, parent):
    """The Tuner of a saved search, with the settings it started with; counts the resume on the parent run."""
    import mlflow
    from ray import tune

    log.warning("resuming the search in %s with the settings it started with (another --run-name starts a new one)",
               search.experiment_path)  # fmt: skip
    mlflow.set_tag("automaster.resumed", str(int(parent.data.tags.get("automaster.resumed", "0")) + 1))
    return tune.Tuner.restore(search.experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=True)


def _new_tuner(search: _Search, trainable):
    """A new search: random sampling of :func:`search_space`, ASHA over epochs, one retry per trial."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    tc, epochs = search.base.tune, search.epochs
    log.info("search %r: %d trials x %d epochs, %d at a time, %.2f CPU per Train worker",
             search.name, tc.samples, epochs, search.concurrent, search.cpu_per_worker)  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=search.space,
        tune_config=tune.TuneConfig(
            metric=search.monitor,
            mode="min",
            num_samples=tc.samples,
            scheduler=ASHAScheduler(time_attr=EPOCHS, max_t=epochs,
                                    grace_period=min(tc.grace_period, epochs), reduction_factor=tc.reduction_factor),
            search_alg=BasicVariantGenerator(random_state=tc.seed, max_concurrent=search.concurrent),
        ),  # fmt: skip
        run_config=tune.RunConfig(name=search.name, storage_path=search.tune_path,
                                  failure_config=tune.FailureConfig(max_failures=1)),  # fmt: skip
    )


def _raise_if_interrupted(grid, search: _Search, resume: bool) -> None:
    """A search that Ctrl-C stopped: end the parent run KILLED and raise :class:`SearchInterrupted`."""
    import mlflow

    unfinished = unfinished_trials(search.experiment_path)
    samples = search.base.tune.samples
    if unfinished or (not resume and len(grid) < samples):
        mlflow.end_run("KILLED")
        raise SearchInterrupted(
            f"the search stopped with {unfinished} of {len(grid)} trials unfinished ({samples} planned); "
            f"its state is in {search.experiment_path}: run the same command again to resume it (logs: {search.log_file})"
        )


def _best_trial(trials: list[dict[str, Any]], monitor: str) -> dict[str, Any]:
    """The trial with the lowest ``monitor``; an error naming each trial's failure when none reported it."""
    ok = [t for t in trials if t["best"] is not None]
    if not ok:
        errors = "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials if t["error"])
        raise RuntimeError(f"no trial reported {monitor} ({errors or 'no trials ran'})")
    return min(ok, key=lambda t: t["best"])


def _export_best_model(best: dict[str, Any], out: str) -> str | None:
    """``out/model`` from the best trial's best checkpoint; None when that is not on this machine."""
    model_dir = storage.join(out, MODEL_DIR)
    if best["checkpoint"] and Path(best["checkpoint"]).is_dir():
        _export_model(best["checkpoint"], model_dir)
        return model_dir
    log.warning("the best trial's checkpoint %s is not on this machine; no model/ exported", best["checkpoint"])
    return None


def _summary(
    search: _Search, best: dict[str, Any], trials: list[dict[str, Any]], wall_s: float, model_dir: str | None,
    out: str, *, run_id: str, tracking_uri: str, experiment: str,
) -> dict[str, Any]:  # fmt: skip
    """``tune_summary.json``: the best trial, every trial's outcome and the compute ASHA saved."""
    epochs_run = sum(t["epochs"] for t in trials)
    epochs_full = search.epochs * len(trials)
    return {
        "name": search.name,
        "mlflow_run_id": run_id,
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "monitor": search.monitor,
        "best_trial": best["trial_id"],
        "best_params": best["params"],
        "best_metric": best["best"],
        "best_epoch": best["best_epoch"],
        "best_config": storage.join(out, BEST_CONFIG),
        "model": model_dir,
        "trials": trials,
        "trials_run": len(trials),
        "trials_stopped_early": sum(t["status"] == "stopped_early" for t in trials),
        "trials_failed": sum(t["status"] == "error" for t in trials),
        "epochs_run": epochs_run,
        "epochs_full": epochs_full,
        "compute_saved": 1.0 - epochs_run / max(epochs_full, 1),
        "wall_s": wall_s,
        "concurrent_trials": search.concurrent,
        "workers_per_trial": search.base.tune.workers_per_trial,
        "tune_path": search.experiment_path,
    }


def _write_outputs(search: _Search, best: dict[str, Any], summary: dict[str, Any], out: str, model_dir: str | None) -> None:
    """``best_config.json`` and ``tune_summary.json`` under ``out``; them, the model and the results on the parent run."""
    import mlflow

    from automaster.pipelines import tracking

    best_config = apply_params(search.config, best["params"])
    best_path = summary["best_config"]
    if storage.is_local(best_path):
        Path(best_path).parent.mkdir(parents=True, exist_ok=True)
        save_config(best_config, best_path)
        mlflow.log_artifact(best_path)
    else:
        storage.write_bytes_atomic(best_path, (tracking.dumps(best_config.to_dict()) + "\n").encode())
        tracking.log_json(best_config.to_dict(), BEST_CONFIG)
    storage.write_bytes_atomic(storage.join(out, SUMMARY), tracking.dumps(summary).encode())
    mlflow.log_metrics({
        f"best/{search.monitor}": best["best"], "trials_run": summary["trials_run"],
        "trials_stopped_early": summary["trials_stopped_early"], "trials_failed": summary["trials_failed"],
        "epochs_run": summary["epochs_run"], "epochs_full": summary["epochs_full"],
        "compute_saved": summary["compute_saved"], "wall_s": summary["wall_s"],
    })  # fmt: skip
    mlflow.set_tags({"automaster.best_trial": best["trial_id"], **{f"best.{k}": str(v) for k, v in best["params"].items()}})
    if model_dir and storage.is_local(model_dir):
        mlflow.log_artifacts(model_dir, "model")
    tracking.log_json(summary, SUMMARY)
