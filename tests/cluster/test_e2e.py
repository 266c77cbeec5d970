"""From laptop to cluster, end to end: the four jobs through `ray job submit --working-dir .` on a
loopback, token-authenticated Ray head (cluster/local.sh), every run on an MLflow tracking server.

What a user does on a real cluster, on one machine: start `mlflow server` (SQLite backend store,
artifacts proxied to a folder), point the jobs at it through the runtime environment
(`env_vars: MLFLOW_TRACKING_URI`) or `--tracking-uri`, submit demaster -> train -> tune -> master
with cluster/runtime_env.yaml, then compare the runs. Demaster writes to a `file://` URI (the
`pyarrow.fs` storage path that `s3://`/`gs://` take) and train reads from it. Tiny settings.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
import soundfile as sf
import yaml

from tests.cluster.test_local_script import REPO, _free_ports, start_cluster
from tests.pipelines.test_tune import TINY  # the smallest model the tests train

pytestmark = [
    pytest.mark.slow,
    # four jobs in one module fixture: 12 min measured on 2 cores shared with a load average of
    # 20-90 (the jobs 53 + 83 + 194 + 98 s from submit to finish); the default 900 s is too tight
    pytest.mark.timeout(2400),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cluster/local.sh checks listeners on Linux"),
]

FMA = REPO / "tests" / "data" / "fma"
JOBS = ("demaster", "train", "tune", "master")


class MlflowServer:
    """`mlflow server` on 127.0.0.1: SQLite backend store, artifacts proxied into a folder."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store = root / "mlflow.db"
        self.artifacts = root / "artifacts"
        self.log = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        cmd = [
            str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{self.store}",
            "--artifacts-destination", str(self.artifacts),
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        with open(self.log, "wb") as log:
            # its own process group: stop() ends the server and every worker it forked
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not answer {self.uri}/health:\n{self.log.read_text()[-3000:]}")
            time.sleep(1.0)

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # the group may outlive its leader for a moment (uvicorn workers)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    s = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    request.addfinalizer(s.stop)
    s.start()
    return s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    return start_cluster(tmp_path_factory, request, "e2e", num_cpus=2)


def runtime_env_file(folder: Path, **env_vars: str) -> Path:
    """cluster/runtime_env.yaml (its excludes, its env_vars) with ``env_vars`` added."""
    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    env["env_vars"] = {**env.get("env_vars", {}), **env_vars}
    path = folder / f"runtime_env_{len(list(folder.glob('runtime_env_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(env, sort_keys=False))
    return path


def plain(text: str) -> str:
    """``text`` without ANSI colours (the Ray CLI colours its messages)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def submit(cluster, runtime_env: Path, *job: str, timeout: int = 900) -> tuple[str, str]:
    """`ray job submit --working-dir .` from the repository root; (submission id, output).

    The output also goes to ``<cluster root>/<job>.log`` while the job runs.
    """
    log = cluster.root / f"{Path(job[0]).stem}.log"
    t = time.monotonic()
    with open(log, "w+") as f:
        proc = subprocess.run(
            ["ray", "job", "submit", "--runtime-env", str(runtime_env), "--working-dir", ".", "--", "python", *job],
            stdout=f, stderr=subprocess.STDOUT, text=True, env=cluster.client_env(), cwd=REPO, timeout=timeout,
        )  # fmt: skip
        f.seek(0)
        out = f.read()
    print(f"{job[0]}: {time.monotonic() - t:.0f} s from submit to finish", file=sys.stderr)
    assert proc.returncode == 0 and "succeeded" in out, out[-6000:]
    found = re.findall(r"raysubmit_\w+", out)
    assert found, out[-3000:]
    assert f"Job '{found[0]}' succeeded" in plain(out), out[-3000:]
    return found[0], out


def job_status(cluster, submission_id: str) -> str:
    """What `ray job status` says of the job, ANSI colours removed."""
    proc = subprocess.run(
        ["ray", "job", "status", submission_id], capture_output=True, text=True, env=cluster.client_env(), cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return plain(proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def pipeline(cluster, server, tmp_path_factory):
    """demaster -> train -> tune -> master, each through `ray job submit`; outputs and job ids."""
    tmp = tmp_path_factory.mktemp("e2e_out")
    env_server = runtime_env_file(tmp, MLFLOW_TRACKING_URI=server.uri)
    env_no_uri = runtime_env_file(tmp)  # tune gets the server by --tracking-uri instead
    paired_uri = (tmp / "paired").as_uri()  # file:///...: the pyarrow.fs path of s3:// and gs://
    jobs = {}
    jobs["demaster"], out = submit(
        cluster, env_server, "jobs/demaster.py", "--corpus", str(FMA), "--out", paired_uri,
        "--clip-seconds", "5", "--min-seconds", "2",
    )  # fmt: skip
    assert "4 ok, 3 failed" in out, out[-3000:]
    jobs["train"], train_out = submit(
        cluster, env_server, "jobs/train.py", "--data", paired_uri, "--out", str(tmp / "train"), "--epochs", "1",
        "--run-name", "e2e-train", "-v", *[a for s in TINY for a in ("--set", s)],
    )  # fmt: skip
    # -v through a submitted job: Ray Train's worker logs reach the submitter's console
    assert "(RayTrainWorker pid=" in train_out, train_out[-3000:]
    jobs["tune"], tune_out = submit(
        cluster, env_no_uri, "jobs/tune.py", "--data", str(tmp / "paired"), "--out", str(tmp / "tune"),
        "--samples", "2", "--epochs", "1", "--tracking-uri", server.uri, "-v", *[a for s in TINY for a in ("--set", s)],
    )  # fmt: skip
    assert "tune: 2 trials" in tune_out and "best config:" in tune_out, tune_out[-3000:]  # the search's own summary
    # -v: Ray Tune's experiment table and its trainers' logs
    assert "Configuration for experiment" in tune_out and "(RayTrainWorker pid=" in tune_out, tune_out[-3000:]
    jobs["master"], _ = submit(
        cluster, env_server, "jobs/master.py", "--model", str(tmp / "train" / "model"),
        "--input", str(FMA / "fma_small" / "000"), "--out", str(tmp / "mastered"),
    )  # fmt: skip
    return {"tmp": tmp, "jobs": jobs}


def test_every_job_succeeded_on_the_cluster(cluster, pipeline):
    for job in JOBS:
        sid = pipeline["jobs"][job]
        assert f"Job '{sid}' succeeded" in job_status(cluster, sid), job


def test_outputs_of_every_job(pipeline):
    tmp = pipeline["tmp"]
    paired = tmp / "paired"
    summary = json.loads((paired / "summary.json").read_text())
    assert summary["ok"] == 4 and summary["out"] == paired.as_uri()  # the job saw the URI, not a path
    assert len(list((paired / "dataset").glob("*.parquet"))) == 4
    assert (paired / "dataset_meta.json").is_file()

    for model in (tmp / "train" / "model", tmp / "tune" / "model"):
        assert (model / "model.pt").stat().st_size > 0 and (model / "config.json").is_file(), model
    assert json.loads((tmp / "train" / "train_summary.json").read_text())["rows"]["training"] > 0

    best = json.loads((tmp / "tune" / "best_config.json").read_text())
    assert {"loss", "train", "model"} <= set(best)
    tune_summary = json.loads((tmp / "tune" / "tune_summary.json").read_text())
    assert tune_summary["trials_run"] == 2 and tune_summary["trials_failed"] == 0

    mastered = tmp / "mastered"
    summary = json.loads((mastered / "summary.json").read_text())
    assert summary["ok"] == 4 and summary["failed"] == 0, summary["failures"]
    inputs = {p.stem: sf.info(str(p)).samplerate for p in (FMA / "fma_small" / "000").glob("*.mp3")}
    outputs = {p.stem: sf.info(str(p)) for p in (mastered / "audio").rglob("*.*")}
    assert set(outputs) == set(inputs)
    for stem, info in outputs.items():
        assert info.frames > 0 and info.samplerate == inputs[stem], stem  # each input's own rate


def test_every_run_is_on_the_tracking_server(server, cluster, pipeline):
    client = mlflow.MlflowClient(server.uri)
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert {f"automaster-{job}" for job in JOBS} <= set(experiments), experiments
    runs = client.search_runs(list(experiments.values()), max_results=1000)
    by_job: dict[str, list] = {}
    for run in runs:
        by_job.setdefault(run.data.tags.get("automaster.job"), []).append(run)
    assert {job: len(by_job.get(job, [])) for job in (*JOBS, "tune-trial")} == {
        "demaster": 1, "train": 1, "tune": 1, "master": 1, "tune-trial": 2,
    }  # fmt: skip
    for job_runs in by_job.values():
        for run in job_runs:
            assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
    metrics = {job: by_job[job][0].data.metrics for job in JOBS}
    assert metrics["demaster"]["tracks_ok"] == 4
    assert "val/mel_l1_db" in metrics["train"] and len(client.get_metric_history(by_job["train"][0].info.run_id, "val/mel_l1_db")) == 1
    assert "best/val/mel_l1_db" in metrics["tune"] and metrics["tune"]["trials_run"] == 2
    assert metrics["master"]["files_ok"] == 4
    parent = by_job["tune"][0].info.run_id
    assert {r.data.tags.get("mlflow.parentRunId") for r in by_job["tune-trial"]} == {parent}
    # artifacts went through the server's proxy into its --artifacts-destination
    train_run = by_job["train"][0]
    assert train_run.info.artifact_uri.startswith("mlflow-artifacts:"), train_run.info.artifact_uri
    assert {a.path for a in client.list_artifacts(train_run.info.run_id, "model")} >= {"model/model.pt", "model/config.json"}
    assert list(server.artifacts.rglob("model.pt")), "no artifact reached the server's artifact store"
    # nothing went to the cluster's default store (the runtime env and --tracking-uri won)
    default_store = cluster.workdir / "mlflow.db"
    assert not default_store.exists(), default_store


def test_compare_lists_the_runs_from_the_server(server, pipeline, tmp_path):
    table = tmp_path / "runs.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "automaster.cli", "compare", "--tracking-uri", server.uri, "--csv", str(table)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(table.open()))
    assert sorted(r["job"] for r in rows) == sorted([*JOBS, "tune-trial", "tune-trial"])
    assert "e2e-train" in proc.stdout
    assert all(r["status"] == "FINISHED" for r in rows)


def test_relative_paths_are_refused_inside_a_submitted_job(cluster):
    proc = subprocess.run(
        ["ray", "job", "submit", "--runtime-env", "cluster/runtime_env.yaml", "--working-dir", ".", "--", "python",
         "jobs/demaster.py", "--corpus", "tests/data/fma", "--out", "results/x"],
        capture_output=True, text=True, env=cluster.client_env(), cwd=REPO, timeout=600,
    )  # fmt: skip
    out = plain(proc.stdout + proc.stderr)
    assert "relative path inside a submitted Ray job" in out, out[-3000:]
