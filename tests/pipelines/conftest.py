"""One local, loopback-only Ray for the pipeline tests (started once: ray.init costs ~5 s)."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from automaster.pipelines.runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An empty MLflow SQLite store with its tables, made once: creating them costs 1-2 s a store."""
    import mlflow

    db = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture()
def tracking_uri(tmp_path, empty_store):
    """A fresh store of the test's own (a copy of :func:`empty_store`)."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
