"""The compressor job end to end on real Ray and MLflow: examples with Ray Data (cached), the fit on
Ray Train (it trains what the core trains), the Ray Tune search, the command's usage errors."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pytest

from automaster.cli import main
from automaster.pipelines.compressor import NO_SCORE, ExampleSpec, for_ray, run_fit
from automaster.pipelines.compressor_tune import run_search
from automaster.restoration.examples import load_examples
from automaster.training.compressor import NetCompressionModel, NetConfig, fit, load_net
from tests.conftest import DATA

FMA = DATA / "fma"
SPEC = ExampleSpec(crops=6, val_crops=6, seconds=2.0, seed=3)
NET = NetConfig(hidden=8, layers=1, epochs=3, batch_size=8)


@pytest.fixture(scope="module")
def jobs(ray_local, tmp_path_factory):
    """One fit, then a search in another folder that holds a copy of the fit's examples (its cache)."""
    tmp = tmp_path_factory.mktemp("compressor")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    fitted = run_fit([str(FMA)], str(tmp / "out"), NET, SPEC, tracking_uri=uri, run_name="fit")
    shutil.copytree(tmp / "out" / "examples", tmp / "search" / "examples")
    searched = run_search([str(FMA)], str(tmp / "search"), NET, SPEC, samples=2, tracking_uri=uri, run_name="search")
    return fitted, searched, uri, tmp / "out"


@pytest.mark.slow
def test_examples_are_made_once_and_bad_songs_recorded(jobs):
    fitted, searched, _, out = jobs
    train = fitted["examples"]["training"]
    assert not train["cached"] and searched["examples"]["training"]["cached"]
    assert [e[0] for e in train["errors"]] == ["001666"]  # header only; the 1.5 s song gives no 2 s crop
    # the cache remembers the songs it could not read (before: a cached run forgot them)
    assert searched["examples"]["training"]["errors"] == train["errors"] and searched["examples"]["training"]["songs"] == train["songs"]
    data = load_examples(out / "examples" / "training.npz")
    assert train["rows"] == len(data["key"]) == 2 * SPEC.crops  # the two good 5 s training songs
    assert set(data["track"]) == {"000002", "000003"}
    assert set(load_examples(out / "examples" / "validation.npz")["track"]) == {"000005"}


@pytest.mark.slow
def test_the_fit_logs_every_epoch_and_the_model_to_mlflow(jobs):
    fitted, _, uri, out = jobs
    client = mlflow.MlflowClient(uri)
    run = client.get_run(fitted["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["automaster.job"] == "train-compressor"
    assert run.data.params["net.hidden"] == "8" and run.data.params["examples.crops"] == "6"
    history = client.get_metric_history(run.info.run_id, "val/score")
    assert [m.step for m in history] == [0, 1, 2]
    for name in ("val/mae_ratio/threshold_rel_db", "val/mae_ratio/log_ratio", "train/loss", "best/val/score"):
        assert name in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/model.pt", "model/config.json"}
    meta = json.loads((out / "model" / "config.json").read_text())
    assert meta["validation"]["val/score"] == pytest.approx(fitted["best"]["val/score"])
    assert 0.0 <= meta["decision"] <= 1.0 + 1e-6


@pytest.mark.slow
def test_ray_train_trains_what_the_core_trains(jobs):
    """The exported model is the core loop's network at the best epoch, to float precision."""
    fitted, _, _, out = jobs
    train, val = load_examples(out / "examples" / "training.npz"), load_examples(out / "examples" / "validation.npz")
    states = []

    class Keep:
        def report(self, epoch, metrics, net):
            states.append((metrics["val/score"], {k: v.clone() for k, v in net.state_dict().items()}))

    fit(NET, train, val, reporter=Keep())
    best_state = min(states, key=lambda s: s[0])[1]
    exported, _ = load_net(out / "model")
    for name, value in exported.state_dict().items():
        np.testing.assert_allclose(value.numpy(), best_state[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert NetCompressionModel.load(str(out / "model")).decision == pytest.approx(fitted["best"]["decision"])


@pytest.mark.slow
def test_the_search_records_a_parent_and_a_finished_child_per_trial(jobs):
    _, searched, uri, _ = jobs
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(searched["mlflow_run_id"])
    assert parent.data.tags["automaster.job"] == "tune-compressor" and parent.info.status == "FINISHED"
    assert "search.lr" in parent.data.params and "net.lr" not in parent.data.params  # searched: per trial
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["automaster.trial_id"] for c in children} == {t["trial_id"] for t in searched["trials"]}
    best = next(c for c in children if c.data.tags["automaster.trial_id"] == searched["best_trial"])
    epochs = next(t["epochs"] for t in searched["trials"] if t["trial_id"] == searched["best_trial"])
    assert [m.step for m in client.get_metric_history(best.info.run_id, "val/score")] == list(range(epochs))
    assert min(t["best"] for t in searched["trials"]) == pytest.approx(searched["best"]["val/score"])
    assert parent.data.tags["automaster.best_trial"] == searched["best_trial"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "model")} == {"model/model.pt", "model/config.json"}


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--features", "level+nope"], "feature group"),
    (["--seconds", "1"], "--seconds must be between"),
    (["--samples", "-1"], "--samples"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--dropout", "1"], "--dropout must be in"),
    (["--seconds", "8"], "--seconds 8: no training song is that long (the longest of 4 is 5.0 s)"),  # before: after Ray started
])  # fmt: skip
def test_bad_arguments_exit_2_with_one_line_before_anything_starts(tmp_path, capsys, args, message):
    assert main(["train-compressor", "--corpus", str(FMA), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_ray_gets_a_finite_score_even_without_compressed_validation_examples():
    """Ray keeps checkpoint metrics as JSON: a NaN would come back as None and break the ranking of a re-run."""
    got = for_ray({"val/score": float("nan"), "val/detector_auc": float("nan"), "train/loss": 0.5})
    assert got == {"val/score": NO_SCORE, "train/loss": 0.5}
    assert for_ray({"val/score": 0.8})["val/score"] == 0.8


@pytest.mark.slow
def test_the_command_fits_and_reports_where_everything_is(jobs, tmp_path, capsys):
    _, _, uri, out = jobs
    shutil.copytree(out / "examples", tmp_path / "out" / "examples")  # the fit's examples: its cache
    code = main(["train-compressor", "--corpus", str(FMA), "--out", str(tmp_path / "out"), "--crops", "6", "--val-crops", "6",
                 "--seconds", "2", "--example-seed", "3", "--epochs", "2", "--hidden", "8", "--tracking-uri", uri])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert text.startswith("train-compressor: trained in ") and "examples: 12 training examples from 2 songs (cached), 6 validation" in text
    assert "  left out: song 001666 (training): " in text
    assert f"model:   {tmp_path / 'out' / 'model'}" in text and (tmp_path / "out" / "model" / "model.pt").is_file()


def test_a_corpus_without_a_validation_split_is_a_usage_error(tmp_path, capsys):
    assert main(["train-compressor", "--corpus", str(DATA / "music"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no validation songs" in err[0]
    assert not (tmp_path / "o").exists()


def test_the_summary_reads_plainly_and_names_the_songs_left_out(capsys):
    from automaster.cli.compressor import _print_summary

    best = {"val/mae_ratio/threshold_rel_db": 0.62, "val/mae_ratio/log_ratio": 0.7, "val/detector_auc": 0.91,
            "val/false_positive_rate": 0.05}
    examples = {"training": {"rows": 1, "songs": 2, "songs_used": 1, "errors": [["000007", "AudioError: cannot read 'x.mp3': empty file (0 bytes)"]]},
                "validation": {"rows": 20, "cached": True, "errors": []}}
    _print_summary({"best": best, "examples": examples, "model": "/o/model", "mlflow_run_id": "r", "tracking_uri": "u",
                    "log_file": "/o/log"}, "train-compressor: trained in 3 s (run x)")  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "  examples: 1 training example from 1 song, 20 validation examples (cached)"
    assert "threshold error 0.62x and ratio error 0.70x a constant guess's (under 1x is skill)" in lines[2]
    assert "AUC 0.910 (0.5 is chance), 5.0% false alarms" in lines[2]
    assert lines[3] == "  left out: song 000007 (training): cannot read 'x.mp3': empty file (0 bytes)"
