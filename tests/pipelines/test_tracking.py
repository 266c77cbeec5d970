"""Where MLflow puts a run's artifacts: beside the SQLite store, not in the working directory of
whoever created the experiment (a submitted Ray job's is a temporary copy of the checkout)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import mlflow

from automaster.pipelines import tracking
from tests.conftest import REPO


def test_artifacts_go_beside_the_sqlite_store_whatever_the_working_directory(tmp_path, monkeypatch):
    store, elsewhere = tmp_path / "store", tmp_path / "job_working_dir"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # configure sets it: restored afterwards
    uri = tracking.configure(f"sqlite:///{store / 'mlflow.db'}", "automaster-audit")
    try:
        experiment = mlflow.get_experiment_by_name("automaster-audit")
        assert experiment.artifact_location == (store / "mlruns" / "automaster-audit").as_uri()
        with mlflow.start_run() as run:
            tracking.log_bytes_artifact(b"{}", "summary.json")
        assert (store / "mlruns" / "automaster-audit" / run.info.run_id / "artifacts" / "summary.json").read_bytes() == b"{}"
        assert not (elsewhere / "mlruns").exists()
        assert tracking.configure(uri, "automaster-audit") == uri  # an existing experiment is taken as it is
    finally:
        mlflow.set_tracking_uri(None)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_does_not_answer_is_given_up_at_once(tmp_path):
    """A batch job goes on unrecorded (before: MLflow retried the refused connection for 4 minutes
    first, in silence); the subprocess's timeout is the guard."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    code = ("from automaster.pipelines import tracking; r = tracking.JobRun('e', None, %r, {}); r.start(); "
            "print(r.run_id, r.problem)" % uri)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("None ") and "refused" in proc.stdout.lower() and uri in proc.stdout, proc.stdout
    assert tracking.unreachable(f"sqlite:///{tmp_path / 'm.db'}") is None  # only a server is probed
