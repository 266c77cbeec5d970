"""Ray Tune end to end: a small search on local Ray, MLflow parent/children, best config, resume
(of a finished search, and after a crash and a Ctrl-C), 2 Train workers per trial."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
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


@pytest.mark.parametrize("cpus", [2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_concurrent_trials_always_leave_a_whole_cpu_for_reading_data(cpus, workers):
    from automaster.pipelines.tune import DATA_CPUS, TRIAL_CPU, plan_resources

    config = load_config(overrides=["tune.samples=64", f"tune.workers_per_trial={workers}"])
    concurrent, per_worker = plan_resources(config, cpus, 0)
    assert concurrent >= 1 and 0 < per_worker <= config.train.cpus_per_worker
    held = concurrent * (TRIAL_CPU + workers * per_worker)
    assert round(cpus - held, 4) >= DATA_CPUS, (concurrent, per_worker)
    assert concurrent == max(1, cpus // workers)  # as many trials as the CPUs hold workers
    expected = {(2, 1): (2, 0.49), (2, 2): (1, 0.495), (4, 2): (2, 0.745), (16, 1): (16, 0.927)}
    assert (concurrent, per_worker) == expected.get((cpus, workers), (concurrent, per_worker))


def test_a_search_killed_before_its_first_state_starts_again(tmp_path):
    from automaster.pipelines.tune_state import restorable as _restorable

    assert not _restorable(str(tmp_path / "none"))
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "tuner.pkl").write_bytes(b"")  # what a driver killed in its first seconds leaves
    assert not _restorable(str(tmp_path / "tune"))
    (tmp_path / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    assert _restorable(str(tmp_path / "tune"))


def test_trials_of_two_train_workers_each(paired, tmp_path, ray_tune):
    """``--workers-per-trial 2`` on 2 CPUs: one trial at a time, its 2 workers at 0.495 CPU each,
    one CPU left to the dataset's read tasks (without it the trial waits for its data forever)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(overrides=[*TINY, "tune.samples=1", "tune.epochs=1", "tune.workers_per_trial=2"])
    summary = run_tune(str(paired), str(tmp_path / "out"), config, tracking_uri=uri)
    assert summary["workers_per_trial"] == 2 and summary["concurrent_trials"] == 1
    assert summary["trials_run"] == 1 and summary["trials_failed"] == 0 and summary["epochs_run"] == 1
    client = mlflow.MlflowClient(uri)
    assert client.get_run(summary["mlflow_run_id"]).data.params["cpus_per_train_worker"] == "0.495"
    for child in _children(client, summary):
        assert child.data.params["train.workers"] == "2" and child.info.status == "FINISHED"
    assert load_config(tmp_path / "out" / "best_config.json").train.workers == 1  # the user's setting, not the trials'
    deadline = time.time() + 60
    while ray_tune.available_resources().get("CPU", 0) != pytest.approx(2.0) and time.time() < deadline:
        time.sleep(1)
    assert ray_tune.available_resources().get("CPU", 0) == pytest.approx(2.0)


def _cli_tune(paired: Path, out: Path, *flags: str) -> list[str]:
    """``python jobs/tune.py`` (one trial of one epoch) in a fresh process with its own local Ray:
    its console, line by line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [sys.executable, "jobs/tune.py", "--data", str(paired), "--out", str(out), "--samples", "1", "--epochs", "1",
           "--tracking-uri", f"sqlite:///{out}.db", *[a for s in TINY for a in ("--set", s)], *flags]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return (proc.stdout + proc.stderr).splitlines()


def test_tune_console_is_short_and_the_libraries_logs_go_to_a_file(paired, tmp_path):
    """(``-v`` brings Ray Tune's table and the trainers' logs to the console: tests/cluster/test_e2e.py's
    submitted tune job.)"""
    quiet = _cli_tune(paired, tmp_path / "quiet")
    assert len(quiet) <= 8, "\n".join(quiet)
    assert not any("pid=" in line or "Trial status" in line for line in quiet), "\n".join(quiet)
    assert sum(line.startswith(("tune: 1 trials of", "tune: 1 trials in")) for line in quiet) == 2  # before, summary
    log_file = tmp_path / "quiet" / "logs" / "tune.log"
    assert any(str(log_file) in line for line in quiet), "\n".join(quiet)
    text = log_file.read_text()
    assert "Configuration for experiment" in text and "ray.data" in text  # Ray Tune's table, Ray Data's logs


# ----------------------------------------------------------------------------- interrupted, then resumed

# one trial at a time and no early stopping: which trial is where when the job is stopped is known;
# more crops per epoch: an epoch lasts long enough (~1 s) to crash the job in the middle of a trial
RESUMABLE = [*TINY, "tune.max_concurrent=1", "tune.grace_period=2", "train.crops_per_track=8"]


class TuneJob:
    """``python jobs/tune.py`` as a user runs it, in its own session so that it can be interrupted.

    The job starts its own local Ray; ``RAY_TMPDIR`` gives that Ray a private temp dir, and every
    process of it (the driver's children and the workers that the raylet forks) inherits the
    variable: :meth:`pids` finds them by it, and only them, among other Ray instances on the machine.
    """

    def __init__(self, paired: Path, out: Path, uri: str):
        self.out, self.runs = out, 0
        self.ray_tmp = tempfile.mkdtemp(prefix="amt-", dir="/tmp")  # short: Ray's socket paths live under it
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "MLFLOW_TRACKING_URI"}
        self.env.update(RAY_TMPDIR=self.ray_tmp, RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
        self.cmd = [
            sys.executable, "jobs/tune.py", "--data", str(paired), "--out", str(out), "--samples", "2", "--epochs", "2",
            "--tracking-uri", uri, *[a for s in RESUMABLE for a in ("--set", s)],
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.runs += 1
        self.log = self.out.parent / f"run{self.runs}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def trials(self) -> dict[str, int]:
        """The trials whose trainer has started (their Ray Train run folders, named by trial id),
        with the epochs it has checkpointed (in Ray Train's list of checkpoints)."""
        out = {}
        for marker in (self.out / "trials").glob("*/.validate_storage_marker"):
            try:
                snapshot = json.loads((marker.parent / "checkpoint_manager_snapshot.json").read_text())
            except (OSError, ValueError):  # none yet, or being written
                snapshot = {}
            out[marker.parent.name] = len(snapshot.get("checkpoint_results", []))
        return out

    def wait_for(self, condition, what: str, timeout: float = 900) -> None:
        """Poll ``condition(self.trials())`` (an epoch lasts seconds here: poll often)."""
        deadline = time.monotonic() + timeout
        while not condition(self.trials()):
            assert self.proc.poll() is None, f"the job ended (rc {self.proc.returncode}) before {what}:\n{self.text()[-5000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s: {self.trials()}\n{self.text()[-5000:]}"
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        """``sig`` to the job's process group: what Ctrl-C in its terminal (SIGINT) does."""
        os.killpg(self.proc.pid, sig)

    def crash(self) -> None:
        """SIGKILL the job's process group (the driver, its raylet and GCS), then at once the workers
        it leaves (each Ray worker runs in its own process group): the whole job dies, as with the
        machine, instead of its trainers finishing an epoch or two while they notice."""
        self.signal(signal.SIGKILL)
        self.kill_leftovers()
        self.proc.wait(60)

    def kill_leftovers(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def wait(self, timeout: float = 900) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job did not end within {timeout:.0f} s:\n{self.text()[-5000:]}")

    def pids(self) -> set[int]:
        """Live processes of this job's Ray (zombies, whose parent died, excluded: nothing to kill)."""
        marker = f"RAY_TMPDIR={self.ray_tmp}".encode()
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue
            except OSError:
                continue
            found.add(int(entry.name))
        return found

    def wait_gone(self, timeout: float = 60) -> set[int]:
        """The processes of the job's Ray still alive after ``timeout`` s (they exit on their own)."""
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            time.sleep(1.0)
        return left

    def teardown(self) -> None:
        """Kill whatever the job left (its own processes only), then its Ray temp dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(30)
        self.kill_leftovers()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job's Ray processes through /proc")
def test_a_crashed_then_interrupted_search_resumes_where_it_stopped(paired, tmp_path):
    """A crash (SIGKILL of the job's process group) once the first trial has checkpointed its first
    epoch, a Ctrl-C (SIGINT) once the second trial runs, then the same command to the end: each run
    continues the last, finished trials are kept, no epoch is trained twice."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    job = TuneJob(paired, out, uri)
    try:
        # 1. a crash once the first trial has checkpointed its first epoch (of 2)
        job.start()
        job.wait_for(lambda t: any(t.values()), "first checkpoint")
        job.crash()
        crashed_ms = time.time() * 1000
        ((first, checkpointed),) = job.trials().items()  # what its trainer will resume from
        assert not job.wait_gone(10), f"processes left by the crashed job's Ray: {job.pids()}"

        # 2. the same command resumes; Ctrl-C once the first trial is done and the second one runs
        job.start()
        job.wait_for(lambda t: len(t) >= 2, "second trial")
        job.signal(signal.SIGINT)
        rc = job.wait(300)
        interrupted_ms = time.time() * 1000
        text = job.text()
        assert "resuming the search" in text, text[-5000:]
        assert rc != 0 and "run the same command again to resume" in text, text[-5000:]
        assert not (out / "best_config.json").exists() and not (out / "tune_summary.json").exists()
        assert not job.wait_gone(), f"processes left by the interrupted job's Ray: {job.pids()}"
        (second,) = set(job.trials()) - {first}
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("automaster-tune")
        parents = client.search_runs([exp.experiment_id], filter_string="tags.`automaster.job` = 'tune'")
        assert [p.info.status for p in parents] == ["KILLED"]

        # 3. the same command again finishes the search
        job.start()
        rc = job.wait()
        text = job.text()
        assert rc == 0, text[-5000:]
        assert "resuming the search" in text and "tune: 2 trials" in text
        assert not job.wait_gone(), f"processes left by the job's Ray: {job.pids()}"
    finally:
        job.teardown()

    summary = json.loads((out / "tune_summary.json").read_text())
    ids = [t["trial_id"] for t in summary["trials"]]
    assert len(ids) == 2 and {first, second} == set(ids)
    assert summary["trials_run"] == 2 and summary["epochs_run"] == 4 and summary["trials_failed"] == 0
    assert all(t["status"] == "completed" and t["epochs"] == 2 for t in summary["trials"]), summary["trials"]
    # one parent run, resumed twice, with one child per trial
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`automaster.job` = 'tune'")
    assert len(parents) == 1 and parents[0].info.run_id == summary["mlflow_run_id"]
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["automaster.resumed"] == "2"
    children = {c.info.run_name: c for c in _children(client, summary)}
    assert sorted(children) == sorted(ids)
    history = {t: client.get_metric_history(children[t].info.run_id, "val/mel_l1_db") for t in ids}
    for t in ids:
        assert sorted({m.step for m in history[t]}) == [0, 1], (t, history[t])
        assert children[t].info.status == "FINISHED"
    # the crashed trial went on from its checkpoint: its epoch 0 was trained once, before the crash,
    # and its epoch 1 after it (unless the crash came too late: then the resumed run trained nothing)
    epoch0 = [m for m in history[first] if m.step == 0]
    assert len(epoch0) == 1 and epoch0[0].timestamp < crashed_ms, epoch0
    epoch1 = [m for m in history[first] if m.step == 1]
    if checkpointed == 1:
        assert epoch1[-1].timestamp > crashed_ms, epoch1
    else:
        assert all(m.timestamp < crashed_ms for m in epoch1), epoch1
    # ... and it was finished and kept when the search was interrupted: the last run trained none of it
    assert all(m.timestamp < interrupted_ms for m in history[first]), history[first]
    # the trial stopped by Ctrl-C ran again from its last checkpoint: its epochs in order, each once,
    # except the one epoch Ctrl-C may cut between logging its metrics and registering its checkpoint
    steps = [m.step for m in sorted(history[second], key=lambda m: m.timestamp)]
    assert sorted(set(steps)) == [0, 1] and steps == sorted(steps) and len(steps) <= 3, history[second]
    # the summary ranks what MLflow holds (an epoch trained again after the crash counts once, as retrained)
    logged = {t: min({m.step: m.value for m in sorted(history[t], key=lambda m: m.timestamp)}.values()) for t in ids}
    assert summary["best_trial"] == min(logged, key=logged.get)
    assert summary["best_metric"] == pytest.approx(logged[summary["best_trial"]])
    best = next(t for t in summary["trials"] if t["trial_id"] == summary["best_trial"])
    config = load_config(out / "best_config.json")
    assert config.loss.params == pytest.approx(best["params"]["loss.params"])
    assert config.train.lr == pytest.approx(best["params"]["train.lr"])
    assert (out / "model" / "model.pt").is_file()


def test_a_loss_weight_can_be_fixed_at_zero_but_not_the_learning_rate():
    from automaster.config import load_config
    from automaster.pipelines.tune import search_space

    space = search_space(load_config(overrides=["tune.perceptual_min=0", "tune.perceptual_max=0"]))
    assert space["loss.perceptual"] == 0.0
    with pytest.raises(ValueError, match="lr_min"):
        search_space(load_config(overrides=["tune.lr_min=0", "tune.lr_max=0"]))
    with pytest.raises(ValueError, match="perceptual_min"):
        search_space(load_config(overrides=["tune.perceptual_min=0", "tune.perceptual_max=1"]))
