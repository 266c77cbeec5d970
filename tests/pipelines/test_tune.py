"""Ray Tune end to end: a small search on local Ray, MLflow parent/children, best config, resume."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from automaster.config import Config, load_config
from automaster.pipelines.compare import compare_runs
from automaster.pipelines.demaster import run_demaster
from automaster.pipelines.tune import run_tune

REPO = Path(__file__).resolve().parents[2]
FMA = REPO / "tests" / "data" / "fma"
TINY = [
    "model.unet_depth=2", "model.unet_width=8", "model.lstm_hidden=16", "model.lstm_layers=1",
    "train.crop_frames=64", "train.batch_size=4", "train.crops_per_track=2",
]  # fmt: skip
SEARCH = [*TINY, "tune.samples=3", "tune.epochs=2"]


@pytest.fixture(scope="module")
def ray_tune():
    """A local Ray with its dashboard: Ray Train frees a stopped trial's workers through it."""
    import ray

    from automaster.pipelines import tune

    os.environ.pop("RAY_ADDRESS", None)
    if ray.is_initialized() and not tune._state_api_ok(wait_s=0):
        ray.shutdown()  # the session's dashboard-less Ray (tests/pipelines/conftest.py)
    tune.init_ray(num_cpus=2)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    return ray


@pytest.fixture(scope="module")
def paired(tmp_path_factory, ray_tune):
    tmp = tmp_path_factory.mktemp("paired")
    config = load_config(overrides=["demaster.clip_seconds=3", "demaster.min_seconds=2", "demaster.variants=2"])
    summary = run_demaster(str(FMA), str(tmp / "paired"), config, tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    assert summary["ok"] == 4
    return tmp / "paired"


@pytest.fixture(scope="module")
def search(paired, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    summary = run_tune(str(paired), str(tmp / "out"), load_config(overrides=SEARCH), tracking_uri=uri)
    return summary, uri, tmp / "out"


def _children(client, summary):
    exp = client.get_experiment_by_name("automaster-tune")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{summary['mlflow_run_id']}'")


def test_search_records_a_parent_run_and_a_nested_child_per_trial(search):
    summary, uri, out = search
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.data.tags["automaster.job"] == "tune" and parent.info.status == "FINISHED"
    assert "loss.params" not in parent.data.params and "search.loss.params" in parent.data.params
    children = _children(client, summary)
    assert sorted(c.info.run_name for c in children) == sorted(t["trial_id"] for t in summary["trials"])
    assert len(children) == 3
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"loss.mel_l1", "loss.params", "loss.perceptual", "train.lr"} <= set(child.data.params)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/mel_l1_db")]
        assert steps in ([0], [0, 1]), steps  # every epoch a trial ran, once
        assert child.data.tags["automaster.trial_status"] in ("completed", "stopped_early")
    # the searched values differ between trials and are what the child logged
    assert len({c.data.params["loss.params"] for c in children}) == 3
    # ASHA's bookkeeping adds up: epochs run = what the trials logged; a stopped trial ran 1 epoch
    logged = sum(len(client.get_metric_history(c.info.run_id, "val/mel_l1_db")) for c in children)
    assert summary["epochs_run"] == logged and summary["epochs_full"] == 6
    assert summary["trials_stopped_early"] == 6 - logged == parent.data.metrics["trials_stopped_early"]
    for child in children:
        assert child.data.metrics["best/val/mel_l1_db"] <= child.data.metrics["val/mel_l1_db"]
    assert parent.data.metrics["trials_run"] == 3 and parent.data.metrics["epochs_run"] == logged
    assert parent.data.metrics["best/val/mel_l1_db"] == pytest.approx(summary["best_metric"])
    assert summary["best_metric"] == min(t["best"] for t in summary["trials"])
    best_child = next(c for c in children if c.info.run_name == summary["best_trial"])
    logged_values = [m.value for m in client.get_metric_history(best_child.info.run_id, "val/mel_l1_db")]
    assert summary["best_metric"] == pytest.approx(logged_values[summary["best_epoch"]])  # Tune saw what MLflow holds
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.json", "model", "tune_summary.json"} <= artifacts
    assert json.loads((out / "tune_summary.json").read_text())["best_trial"] == summary["best_trial"]


def test_best_config_file_loads_into_the_training_config(search):
    summary, _, out = search
    path = out / "best_config.json"
    assert "best" in path.name and path.is_file()
    config = load_config(path)
    default = Config()
    best = summary["best_params"]
    assert config.loss.params == pytest.approx(best["loss.params"]) != default.loss.params
    assert config.loss.perceptual == pytest.approx(best["loss.perceptual"]) != default.loss.perceptual
    assert config.train.lr == pytest.approx(best["train.lr"]) != default.train.lr
    assert config.loss.mel_l1 == 1.0  # λ1 fixed by default
    assert config.model.unet_width == 8 and config.train.workers == 1  # the rest is the user's config
    assert (out / "model" / "model.pt").is_file() and (out / "model" / "config.json").is_file()


def test_search_releases_its_ray_resources(search, ray_tune):
    ray = ray_tune
    deadline = time.time() + 60
    while time.time() < deadline:
        cpus = ray.available_resources().get("CPU", 0)
        live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] in ("PENDING", "CREATED")]
        if cpus == pytest.approx(2.0) and not live:
            break
        time.sleep(1)
    assert cpus == pytest.approx(2.0), ray.available_resources()
    assert not live, live


def test_compare_lists_the_trials_with_their_metric(search, tmp_path):
    summary, uri, _ = search
    rows = compare_runs(["automaster-tune"], ["val/mel_l1_db"], tracking_uri=uri)
    assert {r["run"] for r in rows} >= {t["trial_id"] for t in summary["trials"]}
    values = [r["val/mel_l1_db"] for r in rows if r["val/mel_l1_db"] is not None]
    assert len(values) == 3 and values == sorted(values)  # each trial's last epoch, best first
    assert rows[0]["parent"] == summary["name"] and rows[-1]["run"] == summary["name"]  # the parent has none
    table = tmp_path / "runs.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "automaster.cli", "compare", "--tracking-uri", uri, "--experiment", "automaster-tune",
         "--metric", "val/mel_l1_db", "--csv", str(table)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = proc.stdout.splitlines()[0]
    assert "val/mel_l1_db" in header and "λ2" in header
    assert proc.stdout.splitlines()[2].startswith(rows[0]["run"])  # best first
    with table.open(encoding="utf-8") as f:
        parsed = list(csv.DictReader(f))
    assert len(parsed) == 4  # the parent and 3 trials
    assert parsed[0]["run"] == rows[0]["run"] and parsed[0]["run_id"] == rows[0]["run_id"]
    assert float(parsed[0]["val/mel_l1_db"]) == pytest.approx(rows[0]["val/mel_l1_db"])


def test_rerunning_the_same_search_resumes_without_new_trials(search, paired):
    summary, uri, out = search
    again = run_tune(str(paired), str(out), load_config(overrides=SEARCH), tracking_uri=uri)
    assert again["mlflow_run_id"] == summary["mlflow_run_id"]
    assert [t["trial_id"] for t in again["trials"]] == [t["trial_id"] for t in summary["trials"]]
    assert again["epochs_run"] == summary["epochs_run"] and again["best_trial"] == summary["best_trial"]
    assert len(_children(mlflow.MlflowClient(uri), summary)) == 3


def test_bad_search_bounds_are_refused_before_anything_runs(paired, tmp_path):
    with pytest.raises(ValueError, match="tune.params_min/_max"):
        run_tune(str(paired), str(tmp_path), load_config(overrides=[*SEARCH, "tune.params_min=5", "tune.params_max=1"]))
    assert not (tmp_path / "tune").exists()


# ----------------------------------------------------------------------------- ray job submit


@pytest.mark.slow
def test_tune_through_ray_job_submit(paired, tmp_path, ray_tune):
    from tests.cluster.test_local_script import LocalCluster

    ray_tune.shutdown()  # two CPUs: leave them to the submitted job's cluster
    (tmp_path / "cluster").mkdir()
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        start = cluster.script("start", "--num-cpus", "2")
        env = dict(cluster.env)
        for line in re.findall(r"^\s*export (.+)$", start.stdout, flags=re.M):
            for assignment in line.split():
                key, value = assignment.split("=", 1)
                env[key] = value
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        out = tmp_path / "out"
        proc = subprocess.run(
            ["ray", "job", "submit", "--runtime-env", "cluster/runtime_env.yaml", "--", "python", "jobs/tune.py",
             "--data", str(paired), "--out", str(out), "--samples", "3", "--epochs", "1", "--tracking-uri", uri,
             *[a for s in TINY for a in ("--set", s)]],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
        )  # fmt: skip
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "succeeded" in text, text[-5000:]
        assert "tune: 3 trials" in text and "best config:" in text
        summary = json.loads((out / "tune_summary.json").read_text())
        assert summary["trials_run"] == 3 and summary["epochs_run"] == 3
        load_config(out / "best_config.json")
        client = mlflow.MlflowClient(uri)
        assert len(_children(client, summary)) == 3
    finally:
        cluster.teardown()
