"""Where MLflow puts a run's artifacts: beside the SQLite store, not in the working directory of
whoever created the experiment (a submitted Ray job's is a temporary copy of the checkout)."""

from __future__ import annotations

import mlflow

from automaster.pipelines import tracking


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
