"""`automaster compare` on a real MLflow store: sorting, columns, --top, --csv and clear errors."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from automaster.pipelines.compare import CompareError, compare_runs, format_table

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store_template(tmp_path_factory) -> Path:
    """Three training runs and a demaster run in a SQLite store, made once (creating MLflow's tables
    takes seconds); each test gets a copy of it."""
    db = tmp_path_factory.mktemp("compare_store") / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = mlflow.MlflowClient(uri)
    train = client.create_experiment("automaster-train")
    for name, lr, l2, val in [("a", 1e-3, 1.0, 5.0), ("b", 3e-4, 2.5, 3.0), ("c", 2e-3, 0.2, None)]:
        run = client.create_run(train, run_name=name, tags={"automaster.job": "train"})
        for key, value in {"model.mode": "cascade", "train.lr": lr, "loss.params": l2, "train.workers": 2}.items():
            client.log_param(run.info.run_id, key, value)
        if val is not None:
            client.log_metric(run.info.run_id, "val/mel_l1_db", val + 1.0, step=0)
            client.log_metric(run.info.run_id, "val/mel_l1_db", val, step=1)  # the latest value counts
        client.log_metric(run.info.run_id, "val/mrstft", 0.5)
        client.set_terminated(run.info.run_id)
    demaster = client.create_experiment("automaster-demaster")
    run = client.create_run(demaster, run_name="d", tags={"automaster.job": "demaster"})
    client.log_metric(run.info.run_id, "tracks_per_s", 4.2)
    client.set_terminated(run.info.run_id)
    return db


@pytest.fixture()
def store(store_template, tmp_path) -> str:
    """A fresh copy of :func:`store_template` (a test may add to it)."""
    shutil.copyfile(store_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_runs_are_sorted_by_the_first_metric_missing_last(store):
    rows = compare_runs(["automaster-train"], tracking_uri=store)
    assert [r["run"] for r in rows] == ["b", "a", "c"]
    assert rows[0]["val/mel_l1_db"] == 3.0 and rows[2]["val/mel_l1_db"] is None
    assert rows[0]["λ2"] == "2.5" and rows[0]["lr"] == "0.0003" and rows[0]["workers"] == "2"
    assert rows[0]["status"] == "FINISHED" and rows[0]["duration_s"] >= 0
    assert list(rows[0])[:6] == ["run", "run_id", "experiment", "job", "parent", "status"]


def test_every_experiment_by_default_and_throughput_sorts_highest_first(store):
    rows = compare_runs(None, ["tracks_per_s", "val/mel_l1_db"], tracking_uri=store)
    assert len(rows) == 4 and rows[0]["run"] == "d" and rows[0]["tracks_per_s"] == pytest.approx(4.2)


def test_top_keeps_the_best(store):
    assert [r["run"] for r in compare_runs(["automaster-train"], top=1, tracking_uri=store)] == ["b"]


def test_table_is_aligned_and_drops_empty_columns(store):
    text = format_table(compare_runs(["automaster-train"], ["val/mel_l1_db"], tracking_uri=store))
    lines = text.splitlines()
    assert len(lines) == 5 and set(lines[1]) <= {"-", " "}
    assert "val/mel_l1_db" in lines[0] and "λ1" not in lines[0]  # nobody logged loss.mel_l1
    column = lines[0].index("val/mel_l1_db")
    end = column + len("val/mel_l1_db")
    assert lines[2][:end].endswith("3") and lines[4][:end].endswith("-")  # right-aligned numbers


def test_csv_holds_the_same_rows(store, tmp_path):
    rows = compare_runs(["automaster-train"], csv=tmp_path / "out" / "runs.csv", tracking_uri=store)
    with (tmp_path / "out" / "runs.csv").open(encoding="utf-8") as f:
        parsed = list(csv.DictReader(f))
    assert [p["run"] for p in parsed] == [r["run"] for r in rows]
    assert parsed[0]["run_id"] == rows[0]["run_id"] and len(parsed[0]["run_id"]) == 32
    assert float(parsed[0]["val/mel_l1_db"]) == 3.0 and parsed[2]["val/mel_l1_db"] == ""


def test_missing_store_experiment_or_runs_are_clear_errors(store, tmp_path):
    with pytest.raises(CompareError, match="no MLflow store"):
        compare_runs(tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    assert not (tmp_path / "none.db").exists()  # looking must not create a store
    with pytest.raises(CompareError, match=r"no experiment 'nope'.*automaster-train"):
        compare_runs(["nope"], tracking_uri=store)
    mlflow.MlflowClient(store).create_experiment("empty")
    with pytest.raises(CompareError, match="no runs in experiment"):
        compare_runs(["empty"], tracking_uri=store)


def test_cli_prints_the_table_and_a_one_line_error(store, tmp_path):
    run = [sys.executable, "-m", "automaster.cli", "compare", "--tracking-uri", store]
    proc = subprocess.run([*run, "--experiment", "automaster-train", "--top", "2"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("run") and lines[2].startswith("b ") and len(lines) == 4
    proc = subprocess.run([*run, "--experiment", "nope"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "no experiment 'nope'" in proc.stderr and "Traceback" not in proc.stderr
