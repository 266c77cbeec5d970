"""Ray Tune over the compressor network's settings: size, learning rate, weight decay, dropout, feature set.

The examples are made (or read from the cache) as for the fit (:func:`automaster.pipelines.compressor.prepare`)
and reach every trial through the object store. A trial is a function trainable that runs the same
Ray-free loop as a Ray Train worker (:func:`automaster.training.compressor.fit`) in its own process
(one CPU, or one GPU): the network has a few thousand parameters and an epoch over 50,000 examples
takes a fraction of a second, so a ``TorchTrainer`` per trial would cost more to start than to train
(the cascade's search, :mod:`automaster.pipelines.tune`, needs one per trial; this one does not).
ASHA stops poor trials on ``val/score``, which no searched setting enters.

MLflow: one parent run (tag ``automaster.job=tune-compressor``) with the search's ranges, the best
settings and the best model; one nested child run per trial (named after the trial id) with its
settings and every epoch's metrics. Trials that ASHA stopped are ended FINISHED with the tag
``automaster.stopped_early``. Outputs under ``out``: ``examples/`` (the cache), ``tune/`` (Tune's
state), ``model/`` (the best trial's best epoch, decision set on validation), ``compressor_summary.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from typing import Any

from automaster import storage
from automaster.pipelines.compressor import MODEL_DIR, SUMMARY, ExampleSpec, export_model, finite, for_ray, prepare
from automaster.training.compressor import MONITOR, NetConfig

log = logging.getLogger(__name__)

JOB = "tune-compressor"
# The searched settings and their ranges (the rest of NetConfig is fixed by the command line).
HIDDEN = (16, 32, 64)
LAYERS = (1, 2, 3)
LR = (1e-3, 1e-2)
WEIGHT_DECAY = (1e-5, 1e-1)
DROPOUT = (0.0, 0.3)
FEATURE_SETS = ("all", "level+slopes+modulation", "level+modulation", "level+bands+modulation")


def search_space() -> dict[str, Any]:
    from ray import tune

    return {"hidden": tune.choice(list(HIDDEN)), "layers": tune.choice(list(LAYERS)), "lr": tune.loguniform(*LR),
            "weight_decay": tune.loguniform(*WEIGHT_DECAY), "dropout": tune.choice(list(DROPOUT)),
            "features": tune.choice(list(FEATURE_SETS))}  # fmt: skip


def tune_trial(params: dict[str, Any], setup: dict[str, Any], train=None, val=None) -> None:
    """One trial: a child MLflow run, then the loop, reporting every epoch (and a checkpoint) to Tune."""
    import torch
    from mlflow import MlflowClient
    from ray import tune

    from automaster.training.compressor import fit

    if not setup["use_gpu"]:
        torch.set_num_threads(1)
    trial_id = tune.get_context().get_trial_id()
    config = NetConfig.from_dict({**setup["net"], **params})
    client = MlflowClient(setup["tracking_uri"])
    tags = {"mlflow.parentRunId": setup["parent_run_id"], "automaster.job": "tune-compressor-trial", "automaster.trial_id": trial_id}
    run_id = client.create_run(setup["experiment_id"], run_name=trial_id, tags=tags).info.run_id
    for key, value in config.to_dict().items():
        client.log_param(run_id, key, value)
    device = "cuda" if setup["use_gpu"] and torch.cuda.is_available() else "cpu"
    fit(config, train, val, reporter=_TuneReporter(config, client, run_id), device=device)
    client.set_terminated(run_id, "FINISHED")


class _TuneReporter:
    def __init__(self, config: NetConfig, client, run_id: str) -> None:
        self.config, self.client, self.run_id = config, client, run_id

    def report(self, epoch: int, metrics: dict[str, float], net) -> None:
        from mlflow.entities import Metric
        from ray import tune

        from automaster.training.compressor import save_net

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in finite(metrics).items()])
        with tempfile.TemporaryDirectory() as tmp:
            save_net(tmp, net, self.config, {"metrics": metrics})
            tune.report({**for_ray(metrics), "epochs_done": epoch + 1}, checkpoint=tune.Checkpoint.from_directory(tmp))


def run_search(
    corpora: list[str],
    out: str,
    config: NetConfig = NetConfig(),
    spec: ExampleSpec = ExampleSpec(),
    *,
    samples: int = 8,
    use_gpu: bool = False,
    tracking_uri: str | None = None,
    experiment: str = "automaster-compressor",
    run_name: str | None = None,
    ray_address: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Search the network's settings on ``corpora`` (``samples`` trials of up to ``config.epochs``
    epochs); the best model goes to ``<out>/model``, the summary to ``<out>/compressor_summary.json``."""
    import mlflow
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from automaster.pipelines import runtime, tracking
    from automaster.pipelines.runners import log_file_named_on_failure, stdout_to_log_file
    from automaster.pipelines.train import local_storage_path

    config.check()
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    name = run_name or f"{JOB}-{time.strftime('%Y%m%d-%H%M%S')}"
    train, val, infos, log_file = prepare(corpora, out, spec, verbose, ray_address, JOB)
    if use_gpu and runtime.cluster_gpus() < 1:
        raise ValueError("--gpu: the cluster has no GPU")
    uri = tracking.configure(tracking_uri, experiment)
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    space = search_space()
    with mlflow.start_run(run_name=name) as parent:
        mlflow.set_tags({"automaster.job": JOB, "corpora": ",".join(corpora)})
        fixed = {k: v for k, v in config.to_dict().items() if k not in space}
        tracking.log_params({"net": fixed, "search": {k: str(v) for k, v in space.items()}, "samples": samples,
                             "examples": dataclasses.asdict(spec), "rows": {k: v["rows"] for k, v in infos.items()},
                             "monitor": MONITOR})  # fmt: skip
        setup = {"net": config.to_dict(), "tracking_uri": uri, "experiment_id": experiment_id,
                 "parent_run_id": parent.info.run_id, "use_gpu": use_gpu}  # fmt: skip
        trainable = tune.with_resources(tune.with_parameters(tune_trial, setup=setup, train=train, val=val),
                                        {"gpu": 1, "cpu": 1} if use_gpu else {"cpu": 1})  # fmt: skip
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=MONITOR, mode="min", num_samples=samples,
                scheduler=ASHAScheduler(time_attr="epochs_done", max_t=config.epochs, grace_period=min(5, config.epochs)),
                search_alg=BasicVariantGenerator(random_state=config.seed),
            ),
            run_config=tune.RunConfig(name=name, storage_path=local_storage_path(storage.join(out, "tune")),
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )  # fmt: skip
        t0 = time.time()
        with log_file_named_on_failure(log_file, "tuning"), stdout_to_log_file(log_file, verbose):
            grid = tuner.fit()
        wall = time.time() - t0
        trials = _trial_rows(grid)
        _close_stopped_trials(uri, experiment_id, parent.info.run_id, trials)
        ok = [t for t in trials if t["best"] is not None]
        if not ok:
            raise RuntimeError(f"no trial reported {MONITOR}: " + "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials))
        best = min(ok, key=lambda t: t["best"])
        model_dir = storage.join(out, MODEL_DIR)
        if best["checkpoint"] is None:
            raise RuntimeError(f"the best trial {best['trial_id']} left no checkpoint (logs: {log_file})")
        with best["checkpoint"].as_directory() as ckpt_dir:
            figures = export_model(ckpt_dir, model_dir, val, {"mlflow_run_id": parent.info.run_id, "trial": best["trial_id"],
                                                              "examples": dataclasses.asdict(spec)})  # fmt: skip
        summary = {"run_name": name, "mlflow_run_id": parent.info.run_id, "tracking_uri": uri, "experiment": experiment,
                   "model": model_dir, "monitor": MONITOR, "best_trial": best["trial_id"], "best_params": best["params"],
                   "best_epoch": best["best_epoch"], "best": figures, "trials": [{k: v for k, v in t.items() if k != "checkpoint"} for t in trials],
                   "trials_stopped_early": sum(t["epochs"] < config.epochs for t in ok), "wall_s": wall,
                   "examples": infos, "log_file": log_file}  # fmt: skip
        storage.write_bytes_atomic(storage.join(out, SUMMARY), tracking.dumps(summary).encode())
        mlflow.log_metrics({"wall_s": wall, "trials_run": len(trials), **{f"best/{k}": v for k, v in finite(figures).items()}})
        mlflow.set_tags({"automaster.best_trial": best["trial_id"], **{f"best.{k}": str(v) for k, v in best["params"].items()}})
        mlflow.log_artifacts(model_dir, "model")
        tracking.log_json(summary, SUMMARY)
    return summary


def _trial_rows(grid) -> list[dict[str, Any]]:
    """Per trial: id, searched settings, epochs run, best ``val/score`` and its epoch and checkpoint, error."""
    rows = []
    for result in grid:
        trial_id = result.path.rstrip("/").rsplit("/", 1)[-1]
        df = result.metrics_dataframe
        row = {"trial_id": (result.metrics or {}).get("trial_id", trial_id), "params": {k: result.config[k] for k in search_space()},
               "epochs": 0, "best": None, "best_epoch": None, "checkpoint": None, "error": str(result.error)[:300] if result.error else ""}  # fmt: skip
        if df is not None and MONITOR in df and df[MONITOR].notna().any():
            i = df[MONITOR].idxmin()
            row.update(epochs=int(df["epochs_done"].max()), best=float(df[MONITOR][i]), best_epoch=int(df["epoch"][i]))
            row["checkpoint"] = result.get_best_checkpoint(MONITOR, "min")
        rows.append(row)
    return rows


def _close_stopped_trials(uri: str, experiment_id: str, parent_run_id: str, trials: list[dict[str, Any]]) -> None:
    """Child runs that ASHA stopped (their process was ended mid-loop) are ended FINISHED, tagged so."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for run in client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10000):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "automaster.stopped_early", "true")
            client.set_terminated(run.info.run_id, "FINISHED")
