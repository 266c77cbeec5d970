"""The tuning job's bookkeeping: resuming a search, the trials' MLflow child runs, their results.

Kept apart from :mod:`automaster.pipelines.tune`, which builds and drives the search: this module
reads what Tune, Ray Train and MLflow saved (is there a state to resume, which parent run it
belongs to, which trials are unfinished, each trial's epochs and checkpoints) and keeps the
nested MLflow runs in step with it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from automaster import storage
from automaster.config import Config

log = logging.getLogger(__name__)

EPOCHS = "epochs_done"  # ASHA's time attribute: epoch + 1, the same before and after a resume


# ----------------------------------------------------------------------------- trial side


def report_checkpointed(run_path: str) -> None:
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


def child_run(setup: dict[str, Any], trial_id: str, config: Config, params: dict[str, Any]) -> str:
    """The trial's nested MLflow run (reused when a restored trial starts again)."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from automaster.pipelines.tracking import flatten

    client = MlflowClient(setup["tracking_uri"])
    found = trial_runs(client, setup["experiment_id"], setup["parent_run_id"], trial_id)
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


def trial_runs(client, experiment_id: str, parent_run_id: str, trial_id: str | None = None) -> list:
    """The child runs of ``parent_run_id`` (those of ``trial_id`` alone when given)."""
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    if trial_id:
        query += f" and tags.`automaster.trial_id` = '{trial_id}'"
    return client.search_runs([experiment_id], filter_string=query, max_results=10000)



# ----------------------------------------------------------------------------- driver side


def find_parent(experiment_id: str, name: str, experiment_path: str) -> str | None:
    """The parent run of the search whose Tune state is ``experiment_path`` (the latest such)."""
    import mlflow

    query = f"tags.`automaster.job` = 'tune' and tags.`automaster.tune_name` = '{name}'"
    runs = mlflow.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], output_format="list")
    for run in runs:  # runs from before the tune_path tag existed match on the name alone
        if run.data.tags.get("automaster.tune_path", experiment_path) == experiment_path:
            return run.info.run_id
    return None


def restorable(experiment_path: str) -> bool:
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


def unfinished_trials(experiment_path: str) -> int:
    """Trials that Tune's saved state has neither finished nor failed: > 0 after a Ctrl-C.

    Read from the state Tune saved last, not from ``fit()``'s results: when interrupted, Tune saves
    the trials as they were (running, pending), then stops them and marks them terminated in memory.
    """
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(experiment_path).trials
    return sum(t.status not in ("TERMINATED", "ERROR") for t in trials)


def trial_rows(
    grid, monitor: str, epochs: int, trials_path: str, searched: Iterable[str]
) -> list[dict[str, Any]]:
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
            "params": {k: float(result.config[k]) for k in searched if k in (result.config or {})},
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


def close_child_runs(
    uri: str, experiment_id: str, parent_run_id: str, trials: list[dict[str, Any]], epochs: int, monitor: str
) -> None:
    """Mark each child run with its trial's outcome; end the ones a stopped trial left RUNNING.

    A trial keeps training while Tune decides to stop it, so it may finish (and log) one more
    epoch than it reported: the epochs its run logged are the compute it really spent.
    """
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    by_trial = {t["trial_id"]: t for t in trials}
    for run in trial_runs(client, experiment_id, parent_run_id):
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
