"""Ray Train end to end: 1 and 2 workers, MLflow per epoch, checkpoints, failure and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from automaster.config import load_config
from automaster.model.checkpoint import load_model
from automaster.pipelines.demaster import run_demaster
from automaster.pipelines.train import monitor_metric, run_train

FMA = Path(__file__).resolve().parents[2] / "tests" / "data" / "fma"
TINY = [
    "model.unet_depth=2", "model.unet_width=8", "model.lstm_hidden=16", "model.lstm_layers=1",
    "train.crop_frames=64", "train.batch_size=4", "train.crops_per_track=2", "train.epochs=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def paired(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("paired")
    config = load_config(overrides=["demaster.clip_seconds=3", "demaster.min_seconds=2", "demaster.variants=2"])
    summary = run_demaster(str(FMA), str(tmp / "paired"), config, tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    assert summary["ok"] == 4
    return tmp / "paired"


def _train(paired, out, uri, *sets, name="t"):
    config = load_config(overrides=[*TINY, *sets])
    return run_train(str(paired), str(out), config, tracking_uri=uri, run_name=name)


@pytest.mark.parametrize("workers", [1, 2])
def test_training_logs_every_epoch_and_leaves_a_loadable_model(paired, tmp_path, workers):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = _train(paired, tmp_path / "out", uri, f"train.workers={workers}")
    client = mlflow.MlflowClient(uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["automaster.train_name"] == "t"
    assert run.data.params["train.workers"] == str(workers)
    for key in ("train/loss", "train/mel_l1", "train/params", "val/mel_l1_db", "val/mrstft", "val/mae/echo_delay_s"):
        # a set: a worker lost to the machine (not injected) may log an epoch again on restart
        assert sorted({m.step for m in client.get_metric_history(run.info.run_id, key)}) == [0, 1], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "plots", "train_summary.json"} <= artifacts
    model, config, meta = load_model(tmp_path / "out" / "model")
    assert config.train.workers == workers and meta["epoch"] in (0, 1)
    with torch.no_grad():
        out = model(torch.rand(1, 1, 128, 50))
    assert out["mel"].shape == (1, 1, 128, 50) and out["params"].shape[-1] == 50
    best = summary["best_metrics"]
    assert best["val/mel_l1_db"] > 0 and best["val/mel_l1_db_identity"] > 0


def _cli_train(paired, out: Path, *flags: str) -> list[str]:
    """``automaster train`` in a fresh process (its own local Ray): its console, line by line."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("RAY_ADDRESS", None)
    sets = [arg for s in [*TINY, "train.epochs=1"] for arg in ("--set", s)]
    cmd = [sys.executable, "-m", "automaster.cli", "train", "--data", str(paired), "--out", str(out),
           "--tracking-uri", f"sqlite:///{out}.db", *sets, *flags]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=out.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (proc.stdout + proc.stderr).splitlines()


def test_training_console_is_short_and_the_libraries_logs_go_to_a_file(paired, tmp_path):
    """(``-v`` brings the workers' logs to the console: tests/cluster/test_e2e.py's submitted train job.)"""
    quiet = _cli_train(paired, tmp_path / "quiet")
    assert len(quiet) <= 8, "\n".join(quiet)
    assert not any("pid=" in line for line in quiet), "\n".join(quiet)
    log_file = tmp_path / "quiet" / "logs" / "train.log"
    assert any(str(log_file) in line for line in quiet) and "ray.data" in log_file.read_text()


def test_worker_failure_resumes_from_checkpoint_and_rerun_continues(paired, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = _train(paired, tmp_path / "out", uri, "train.fail_at_epoch=0", name="r")
    client = mlflow.MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "train/loss")]
    assert steps == [0, 1]  # epoch 0 once (not redone after the failure), then epoch 1
    again = _train(paired, tmp_path / "out", uri, "train.epochs=3", name="r")
    assert again["mlflow_run_id"] == summary["mlflow_run_id"]  # same run, continued
    steps = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "train/loss")]
    assert steps == [0, 1, 2]
    assert json.loads((tmp_path / "out" / "train_summary.json").read_text())["run_name"] == "r"
    # the same run name with another model: one line and exit 2 before any cluster, not a worker's
    # screen of state-dict mismatches
    sets = [a for s in TINY if not s.startswith("model.unet_width") for a in ("--set", s)]
    code = subprocess.run(
        [sys.executable, "-c", "import sys; from automaster.cli import main; sys.exit(main(sys.argv[1:]))", "train",
         "--data", str(paired), "--out", str(tmp_path / "out"), "--run-name", "r", "--tracking-uri", uri,
         *sets, "--set", "model.unet_width=4"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip
    assert code.returncode == 2, code.stderr[-2000:]
    assert code.stderr.strip().splitlines() == [
        f"automaster train: error: --run-name r: its checkpoint in {tmp_path / 'out'} has other settings "
        "(model.unet_width = 8 in the checkpoint, 4 now); use another --run-name or the same settings"
    ]


def test_the_spectral_restorer_trains_on_fresh_damage_of_the_originals_with_two_workers(paired, tmp_path):
    """The Ray job wraps the same core: fresh damage (each worker reads the dataset's originals),
    DDP over two workers, validation every step on the fixed pairs, MLflow's step the step."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = ["model.mode=spectral", "model.spectral_width=4", "model.spectral_depth=2", "model.spectral_stem_stride=8",
            "train.crop_seconds=1", "train.batch_size=2", "train.steps=2", "train.val_every=1", "train.workers=2"]  # fmt: skip
    config = load_config(overrides=[*TINY, *sets])
    summary = run_train(str(paired), str(tmp_path / "out"), config, tracking_uri=uri, run_name="s")
    client = mlflow.MlflowClient(uri)
    for key in ("train/mrstft", "val/mrstft", "val/mrstft_oracle_gain", "val/level_error_db"):
        assert sorted({m.step for m in client.get_metric_history(summary["mlflow_run_id"], key)}) == [1, 2], key
    model, loaded, _ = load_model(tmp_path / "out" / "model")
    assert loaded.model.mode == "spectral" and summary["monitor"] == "val/mrstft"
    assert summary["best_metrics"]["val/mrstft_identity"] > 0


def test_training_refuses_a_folder_that_is_not_a_dataset(tmp_path, ray_local):
    with pytest.raises(ValueError, match="not a demaster output"):
        run_train(str(tmp_path), str(tmp_path / "o"), load_config(overrides=TINY))


@pytest.mark.parametrize(
    "mode, monitor, expected",
    [
        ("cascade", "auto", "val/mel_l1_db"),
        ("restore", "auto", "val/mel_l1_db"),
        ("params", "auto", "val/mae_ratio"),
        ("params", "val/mrstft", "val/mrstft"),
    ],
)
def test_monitor_metric_follows_the_model_mode(mode, monitor, expected):
    config = load_config(overrides=[f"model.mode={mode}", f"train.monitor={monitor}"])
    assert monitor_metric(config) == expected
