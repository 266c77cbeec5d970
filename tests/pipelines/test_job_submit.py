"""`ray job submit --working-dir .` of the real jobs against a loopback, token-authenticated head."""

from __future__ import annotations

import json
import re
import subprocess

import mlflow
import pytest

from tests.cluster.test_local_script import REPO, LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    c = LocalCluster(tmp_path_factory.mktemp("submit"))

    request.addfinalizer(c.teardown)
    c.start = c.script("start", "--num-cpus", "2")
    c.client_env = dict(c.env)
    for line in re.findall(r"^\s*export (.+)$", c.start.stdout, flags=re.M):
        for assignment in line.split():
            key, value = assignment.split("=", 1)
            c.client_env[key] = value
    return c


def _submit(cluster, *job: str) -> str:
    proc = subprocess.run(
        ["ray", "job", "submit", "--runtime-env", "cluster/runtime_env.yaml", "--", "python", *job],
        capture_output=True, text=True, env=cluster.client_env, cwd=REPO, timeout=900,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in out, out[-5000:]
    return out


def test_demaster_then_train_through_ray_job_submit(cluster, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    paired, trained = tmp_path / "paired", tmp_path / "train"
    out = _submit(
        cluster, "jobs/demaster.py", "--corpus", str(REPO / "tests" / "data" / "fma"), "--out", str(paired),
        "--clip-seconds", "3", "--min-seconds", "2", "--tracking-uri", uri,
    )  # fmt: skip
    assert "4 ok, 3 failed" in out
    summary = json.loads((paired / "summary.json").read_text())
    assert summary["ok"] == 4 and len(list((paired / "dataset").glob("*.parquet"))) == 4
    _submit(
        cluster, "jobs/train.py", "--data", str(paired), "--out", str(trained), "--epochs", "1",
        "--tracking-uri", uri, "--set", "model.unet_depth=2", "--set", "model.unet_width=8",
        "--set", "train.crop_frames=64", "--set", "model.lstm_hidden=16",
    )  # fmt: skip
    assert (trained / "model" / "model.pt").is_file()
    client = mlflow.MlflowClient(uri)
    runs = {r.data.tags.get("automaster.job"): r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    assert runs["demaster"].data.metrics["tracks_ok"] == 4
    assert runs["train"].info.status == "FINISHED" and "val/mel_l1_db" in runs["train"].data.metrics


def test_relative_paths_are_refused_inside_a_submitted_job(cluster):
    proc = subprocess.run(
        ["ray", "job", "submit", "--runtime-env", "cluster/runtime_env.yaml", "--", "python", "jobs/demaster.py",
         "--corpus", "tests/data/fma", "--out", "results/x"],
        capture_output=True, text=True, env=cluster.client_env, cwd=REPO, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "relative path inside a submitted Ray job" in out, out[-3000:]
    assert "Traceback" not in out
