"""MLflow: where runs go, and small helpers every job shares.

With no ``--tracking-uri`` and no ``MLFLOW_TRACKING_URI``, runs go to a SQLite store in the
working directory (``sqlite:///<cwd>/mlflow.db``). The URI is resolved to an absolute one in the
driver and handed to workers, whose working directory differs (PLATFORM.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

_MAX_PARAM_CHARS = 500


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri`` or ``$MLFLOW_TRACKING_URI`` or the local store, as an absolute URI.

    A bare path becomes ``sqlite:///<abs>`` (a ``.db`` file) or ``file://<abs>`` (a folder).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if "://" in uri or uri.startswith("sqlite:"):
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            # sqlite:///relative.db -> absolute, so workers in other folders find the same store
            return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
        return uri
    path = Path(uri).expanduser().resolve()
    if path.suffix == ".db":
        return f"sqlite:///{path}"
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return path.as_uri()


def configure(uri: str | None = None, experiment: str | None = None) -> str:
    """Point MLflow at ``uri`` (resolved) and create/select ``experiment``; returns the URI."""
    import mlflow

    resolved = resolve_tracking_uri(uri)
    if resolved.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(resolved)
    os.environ["MLFLOW_TRACKING_URI"] = resolved  # children (Ray workers, Tune trials) inherit it
    if experiment:
        _create_beside_store(mlflow, resolved, experiment)
        mlflow.set_experiment(experiment)
    return resolved


def _create_beside_store(mlflow: Any, uri: str, experiment: str) -> None:
    """Create ``experiment`` with its artifacts in ``mlruns/<experiment>`` next to a SQLite store.

    MLflow's default is ``./mlruns`` of the process that creates the experiment, fixed for every
    later run: from a submitted Ray job that is the job's temporary copy of the checkout, so every
    run's artifacts would be lost with the cluster's session.
    """
    if not uri.startswith("sqlite:////") or mlflow.get_experiment_by_name(experiment) is not None:
        return
    folder = Path(uri[len("sqlite:///"):]).parent / "mlruns" / experiment.replace("/", "_")
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # created meanwhile by another process
        mlflow.create_experiment(experiment, artifact_location=folder.as_uri())


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": v}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def log_params(params: dict[str, Any]) -> None:
    """Log a (nested) dict as MLflow params, values shortened to MLflow's limits."""
    import mlflow

    flat = {k: str(v)[:_MAX_PARAM_CHARS] for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params(dict(items[i : i + 100]))


def log_json(data: Any, artifact_file: str) -> None:
    import mlflow

    mlflow.log_dict(data, artifact_file)


@contextlib.contextmanager
def start_run(
    experiment: str,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
    nested: bool = False,
) -> Iterator[Any]:
    """``with start_run("automaster-demaster", "x") as run:`` on the resolved store."""
    import mlflow

    uri = configure(tracking_uri, experiment)
    with mlflow.start_run(run_name=run_name, tags=tags or {}, nested=nested) as run:
        log.info("MLflow run %s in experiment %r at %s", run.info.run_id, experiment, uri)
        yield run


def end_stale_runs(experiment: str, tags: dict[str, str], tracking_uri: str | None = None) -> int:
    """End as KILLED the RUNNING runs of ``experiment`` that carry all of ``tags``; returns how many.

    A batch job calls it while holding its output folder's lock: a run of the same job into the
    same folder that is still RUNNING then belongs to a process that was killed.
    """
    import mlflow

    configure(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    quoted = " and ".join(f"tags.`{k}` = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in tags.items())
    try:
        runs = mlflow.search_runs([exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and {quoted}",
                                  output_format="list")
        client = mlflow.MlflowClient()
        for run in runs:
            client.set_terminated(run.info.run_id, status="KILLED")
            log.info("MLflow run %s of a killed job marked KILLED", run.info.run_id)
    except Exception as exc:  # bookkeeping of earlier runs must never stop this one
        log.warning("could not end earlier RUNNING MLflow runs: %s", exc)
        return 0
    return len(runs)


def log_bytes_artifact(data: bytes, name: str, artifact_path: str | None = None) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / name
        target.write_bytes(data)
        mlflow.log_artifact(str(target), artifact_path)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)
