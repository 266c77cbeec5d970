"""A local Ray started by the jobs binds 127.0.0.1 only, even when ray was imported first; on a
cluster of several machines the jobs refuse local paths that other nodes cannot see."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from automaster.config import ConfigError
from automaster.pipelines.runtime import (
    SHARED_PATHS_ENV,
    LocalPathError,
    check_paths_visible,
    invisible_paths,
    shared_paths,
)

REPO = Path(__file__).resolve().parents[2]


def test_local_ray_is_loopback_even_if_ray_was_imported_first():
    code = (
        "import ray\n"  # imported before automaster sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
        "from automaster.pipelines.runtime import init_ray\n"
        "init_ray(num_cpus=1)\n"
        "print('NODE', ray.util.get_node_ip_address(), sorted({n['NodeManagerAddress'] for n in ray.nodes()}))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NODE 127.0.0.1 ['127.0.0.1']" in proc.stdout


# --------------------------------------------------------------------- local paths on a cluster

def test_one_node_sees_every_path():
    paths = {"--corpus": "/home/me/music", "--out": "file:///tmp/x", "--model": "relative/model"}
    assert invisible_paths(paths, nodes=1) == []
    assert invisible_paths(paths, nodes=0) == []


def test_several_nodes_refuse_local_paths_but_not_uris():
    paths = {
        "--corpus": "/home/me/music", "--data": "file:///tmp/paired", "--out": "s3://bucket/out",
        "--input": "gs://bucket/in", "--model": "hdfs://namenode:8020/models/m", "--none": None, "--empty": "",
    }  # fmt: skip
    assert invisible_paths(paths, nodes=2) == [("--corpus", "/home/me/music"), ("--data", "file:///tmp/paired")]


def test_declared_shared_folders_are_visible(tmp_path):
    mount = tmp_path / "nfs"
    (mount / "paired").mkdir(parents=True)
    link = tmp_path / "data"
    link.symlink_to(mount)
    shared = [str(mount)]
    assert invisible_paths({"--data": str(mount / "paired"), "--out": str(mount / "new" / "train")}, 3, shared) == []
    assert invisible_paths({"--data": str(link / "paired")}, 3, shared) == []  # the same folder through a link
    assert invisible_paths({"--out": (mount / "x").as_uri()}, 3, shared) == []
    # a sibling that merely starts with the same letters is not under it
    assert invisible_paths({"--out": str(tmp_path / "nfs2" / "x")}, 3, shared) == [("--out", str(tmp_path / "nfs2" / "x"))]
    assert invisible_paths({"--out": "/elsewhere"}, 3, shared) == [("--out", "/elsewhere")]


def test_inputs_in_the_jobs_working_dir_are_visible_outputs_are_not(tmp_path):
    job_dir = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    model = str(job_dir / "models" / "reference")
    assert invisible_paths({"--model": model}, 2, job_dir=str(job_dir)) == []
    assert invisible_paths({"--out": str(job_dir / "results")}, 2, job_dir=str(job_dir)) == [("--out", str(job_dir / "results"))]


def test_shared_paths_variable_is_colon_separated(tmp_path):
    value = f"{tmp_path}/a{os.pathsep}{os.pathsep} ~/b {os.pathsep}rel"
    assert shared_paths({SHARED_PATHS_ENV: value}) == [
        f"{tmp_path}/a", os.path.expanduser("~/b"), os.path.abspath("rel"),
    ]  # fmt: skip
    assert shared_paths({}) == []


def test_the_error_is_a_usage_error():
    assert issubclass(LocalPathError, ConfigError) and issubclass(LocalPathError, ValueError)


def test_real_single_node_accepts_local_paths(ray_local, tmp_path):
    assert len([n for n in ray_local.nodes() if n["Alive"]]) == 1
    check_paths_visible({"--corpus": str(tmp_path), "--out": str(tmp_path / "out"), "--model": (tmp_path / "m").as_uri()})


# A real two-node Ray on this machine (ray.cluster_utils.Cluster: two raylets, both on 127.0.0.1,
# token authentication). `ray start --address` cannot add a loopback node: Ray refuses a second node
# when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and rewrites 127.0.0.1 to the routable address otherwise.
TWO_NODES = r"""
import io, os, sys, contextlib
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from automaster.cli import main
from automaster.pipelines.runtime import SHARED_PATHS_ENV, LocalPathError, check_paths_visible
from tests.cluster.test_local_script import _is_loopback, _listeners, pids_matching

temp_dir, corpus, tmp = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "temp_dir": temp_dir})
try:
    ray.init(address=cluster.address)
    # 1. only a head without CPUs: the work will run on nodes an autoscaler adds
    try:
        check_paths_visible({"--out": tmp + "/out"})
        print("HEAD-ONLY: accepted")
    except LocalPathError as exc:
        print("HEAD-ONLY: refused:", exc)
    # 2. two nodes: the real job entry point refuses before any work, as a usage error
    cluster.add_node(num_cpus=1)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print("NODES", len(nodes), sorted({n["NodeManagerAddress"] for n in nodes}))
    listeners = _listeners(pids_matching(temp_dir + "/"))
    print("LISTENERS", len(listeners), "EXPOSED", [(a, p) for a, p, _ in listeners if not _is_loopback(a)])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["demaster", "--corpus", corpus, "--out", tmp + "/paired", "--ray-address", cluster.address])
    print("DEMASTER-EXIT", code)
    print("DEMASTER-STDERR", err.getvalue().strip().splitlines()[-1])
    # 3. URIs and declared shared folders are accepted
    check_paths_visible({"--out": "s3://bucket/paired", "--data": "gs://bucket/x"})
    os.environ[SHARED_PATHS_ENV] = os.pathsep.join(["/nonexistent", corpus, tmp])
    check_paths_visible({"--corpus": corpus, "--out": tmp + "/paired"})
    print("SHARED: accepted")
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="listener check reads /proc (Linux)")
def test_two_node_cluster_refuses_local_paths(tmp_path):
    from tests.cluster.test_local_script import kill_all, pids_matching

    temp_dir = tempfile.mkdtemp(prefix="amr2-", dir="/tmp")  # short: Ray's socket paths live under it
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", SHARED_PATHS_ENV))},
        "HOME": str(home),
        "PYTHONPATH": str(REPO),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    corpus = str(REPO / "tests" / "data" / "fma")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", TWO_NODES, temp_dir, corpus, str(tmp_path)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        kill_all(pids_matching(temp_dir + "/"))
        shutil.rmtree(temp_dir, ignore_errors=True)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-5000:]
    assert "HEAD-ONLY: refused:" in out and "a single node without CPUs or GPUs" in out, out
    assert "NODES 2 ['127.0.0.1']" in out, out
    assert re.search(r"LISTENERS [1-9]\d* EXPOSED \[\]", out), out
    assert "DEMASTER-EXIT 2" in out, out
    message = re.search(r"DEMASTER-STDERR (.*)", out).group(1)
    assert message.startswith("automaster demaster: error: --corpus " + corpus)
    assert f"--out {tmp_path / 'paired'}" in message and "has 2 alive nodes" in message
    assert "s3://" in message and f"{SHARED_PATHS_ENV}=/" in message
    assert "SHARED: accepted" in out, out
    assert not (tmp_path / "mlflow.db").exists()  # refused before any MLflow run


def _descendants(root: int) -> set[int]:
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    parents[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    mine, grew = {root}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in mine} - mine
        grew, mine = bool(more), mine | more
    return mine - {root}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_nothing_a_local_ray_started_outlives_its_killed_driver():
    """kill -9 of a driver: its Ray's agents (DashboardAgent, RuntimeEnvAgent) and workers are
    gone within a few seconds (they used to hold their ports and memory for more than a minute)."""
    code = (
        "import os, time\n"
        "from automaster.pipelines.runtime import init_ray\n"
        "init_ray(num_cpus=1)\n"
        "import ray\n"
        "print(ray.get(ray.remote(lambda: os.getpid()).remote()), flush=True)\n"
        "time.sleep(600)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        worker = int(driver.stdout.readline())
        started = _descendants(driver.pid)
        names = {open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0] for p in started if _alive(p)}
        assert worker in started and {b"ray::DashboardAgent", b"ray::RuntimeEnvAgent"} <= names
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.25)
    left = [open(f"/proc/{p}/cmdline", "rb").read()[:60] for p in started if _alive(p)]
    assert left == []
