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
import time
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


def unreachable(uri: str, timeout_s: float = 10.0) -> str | None:
    """Why the MLflow server at an ``http(s)`` ``uri`` does not answer; None when it answers or
    ``uri`` is no server. MLflow itself retries a refused connection for about 4 minutes, silently,
    before it gives up: one request to the server's ``/health`` tells at once."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None  # it answered (a proxy's 401 or 404 too): MLflow's own calls say more
    except (OSError, ValueError) as exc:  # URLError, a timeout, a malformed address
        reason = getattr(exc, "reason", None) or exc
        return f"the MLflow server does not answer: {reason}"
    return None


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


# ------------------------------------------------------------------ a run that cannot sink a job

# Waits between the tries of an MLflow call that found its store locked (SQLite: another process
# writing). Each try also waits out the busy timeout MLflow sets on SQLite (20 s) before it fails:
# a lock held past about a minute leaves the job unrecorded, not stopped.
RETRY_DELAYS_S: tuple[float, ...] = (1.0, 4.0)
# The end of a run gets longer: a run left RUNNING reads as a job still going.
END_RETRY_DELAYS_S: tuple[float, ...] = (1.0, 4.0, 8.0)


def _chain(exc: BaseException) -> list[BaseException]:
    seen, out, e = set(), [], exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def is_locked(exc: BaseException) -> bool:
    """True when ``exc`` says the store is locked by another process (worth trying again)."""
    return any("locked" in str(e).lower() for e in _chain(exc))


def problem_reason(exc: BaseException, uri: str) -> str:
    """One line on why MLflow could not record: the innermost error's first line and the store."""
    inner = next((e for e in reversed(_chain(exc)) if str(e).strip()), exc)
    if "sqlite3" in type(inner).__module__ or type(inner).__module__.startswith("sqlalchemy"):
        inner = next((e for e in _chain(exc) if type(e).__module__ == "sqlite3"), inner)
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    text = text.removeprefix("(sqlite3.OperationalError) ").removeprefix("(sqlite3.DatabaseError) ")
    return f"{text[:200]} ({uri})"


class JobRun:
    """One MLflow run of a batch job that can never fail the job: the outputs come first.

    Every call goes through :meth:`call`: a locked store is retried with backoff
    (:data:`RETRY_DELAYS_S`); any other failure (a corrupt or unreachable store), or a lock that
    outlasts the tries, sets :attr:`problem` (one line), logs the details to the job's log, and
    every later call is skipped. :meth:`finish` ends the run FINISHED, or FAILED when something
    was not recorded or the job failed, retrying a lock for longer, so that no run is left RUNNING
    (a run that still cannot be ended is ended KILLED by the next job into the same folder).
    """

    def __init__(self, experiment: str, run_name: str | None, tracking_uri: str | None, tags: dict[str, str]):
        self.experiment, self.run_name, self.tags = experiment, run_name, tags
        self.uri = resolve_tracking_uri(tracking_uri)
        self.run_id: str | None = None
        self.problem: str | None = None

    def start(self) -> None:
        """End the job's stale runs (the caller holds its folder's lock), then start this run."""
        import mlflow

        def begin() -> Any:
            if reason := unreachable(self.uri):
                raise ConnectionError(reason)
            configure(self.uri, self.experiment)
            end_stale_runs(self.experiment, self.tags, self.uri)
            while mlflow.active_run() is not None:  # a run an earlier job in this process could not end
                mlflow.end_run("KILLED")
            return mlflow.start_run(run_name=self.run_name, tags=self.tags)

        run = self.call("start the run", begin)
        if run is not None:
            self.run_id = run.info.run_id
            log.info("MLflow run %s in experiment %r at %s", self.run_id, self.experiment, self.uri)

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, retried while the store is locked; None once it failed."""
        if self.problem is not None:
            return None
        for delay in (*RETRY_DELAYS_S, None):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # MLflow's, SQLAlchemy's, requests': any of them may surface here
                if delay is not None and is_locked(exc):
                    log.info("MLflow store locked (%s); trying again in %g s", what, delay)
                    time.sleep(delay)
                    continue
                self.problem = problem_reason(exc, self.uri)
                # The log's line: the console's is the job summary's "not recorded in MLflow: <why>".
                log.info("MLflow could not %s; the job goes on without recording: %s", what, self.problem)
                log.info("MLflow error in full", exc_info=True)
                return None
        return None

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FAILED if something was not recorded); never raises."""
        import mlflow

        if self.run_id is None:
            return
        if self.problem is not None and status == "FINISHED":
            status = "FAILED"
        try:
            if mlflow.active_run() is not None and mlflow.active_run().info.run_id == self.run_id:
                mlflow.end_run(status)  # pops the active run first, then writes the status
                return
        except Exception as exc:
            log.info("MLflow run %s not ended at once: %s", self.run_id, exc)
        for delay in (*END_RETRY_DELAYS_S, None):
            try:
                mlflow.MlflowClient(self.uri).set_terminated(self.run_id, status)
                return
            except Exception as exc:
                if delay is None or not is_locked(exc):
                    self.problem = self.problem or problem_reason(exc, self.uri)
                    log.info("MLflow run %s could not be ended (%s); the next job into this folder ends it",
                                self.run_id, problem_reason(exc, self.uri))
                    return
                time.sleep(delay)
