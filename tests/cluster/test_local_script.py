"""cluster/local.sh for real: a loopback-only, token-authenticated Ray head that accepts `ray job submit`.

Runs on its own ports and temp dir, with its own HOME (so its own auth token), and stops only its
own processes: other Ray instances on the machine are left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "local.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="listener check reads /proc (Linux)"),
    pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash"),
]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


class LocalCluster:
    def __init__(self, root: Path):
        self.port, self.dashboard_port, self.client_port = _free_ports(3)
        self.root = root
        # short: Ray's Unix socket paths live under it
        self.temp_dir = tempfile.mkdtemp(prefix="amr-", dir="/tmp")
        self.home = root / "home"
        self.home.mkdir()
        self.workdir = root / "work"
        self.workdir.mkdir()
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))},
            "HOME": str(self.home),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def script(self, *args: str, check: bool = True, timeout: int = 180) -> subprocess.CompletedProcess:
        cmd = [
            "bash", str(SCRIPT), *args,
            "--port", str(self.port), "--temp-dir", self.temp_dir,
        ]
        if args[0] == "start":
            cmd += ["--dashboard-port", str(self.dashboard_port), "--client-port", str(self.client_port)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=self.workdir, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return proc

    def teardown(self) -> None:
        """Stop the cluster and never leave anything of ours behind, even if stop failed."""
        self.script("stop", check=False, timeout=120)
        kill_all(self.pids())
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def pids(self) -> set[int]:
        """Processes whose command line names the temp dir or the GCS address, and their descendants."""
        return pids_matching(self.temp_dir + "/", "=" + self.temp_dir, f"--address=127.0.0.1:{self.port}")

    def client_env(self) -> dict[str, str]:
        """This environment plus the `export` lines that `start` printed (RAY_ADDRESS, RAY_AUTH_MODE, ...)."""
        env = dict(self.env)
        for line in re.findall(r"^\s*export (.+)$", self.start.stdout, flags=re.M):
            for assignment in line.split():
                key, value = assignment.split("=", 1)
                env[key] = value
        return env


def start_cluster(tmp_path_factory, request, name: str, num_cpus: int = 1) -> LocalCluster:
    """A started LocalCluster (`start` holds the output of `cluster/local.sh start`), stopped at teardown."""
    c = LocalCluster(tmp_path_factory.mktemp(name))
    request.addfinalizer(c.teardown)  # registered before start: runs even if start fails half-way
    c.start = c.script("start", "--num-cpus", str(num_cpus))
    return c


def pids_matching(*needles: str) -> set[int]:
    """Live processes whose command line contains one of ``needles``, and all their descendants."""
    parents, inside = {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        if any(n in cmdline for n in needles) and pid != os.getpid():
            inside.add(pid)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if pid not in inside and ppid in inside:
                inside.add(pid)
                grew = True
    return inside


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def _listeners(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every listening TCP socket that belongs to `pids` (/proc/net/tcp*)."""
    inode_pid = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            m = re.fullmatch(r"socket:\[(\d+)\]", target)
            if m:
                inode_pid[m.group(1)] = pid
    out = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state != "0A" or inode not in inode_pid:  # 0A: LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            if family == socket.AF_INET:
                addr = socket.inet_ntop(family, raw[::-1])
            else:  # four little-endian 32-bit words
                addr = socket.inet_ntop(family, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
            out.append((addr, int(hex_port, 16), inode_pid[inode]))
    return out


def _is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("::1", "::ffff:127.0.0.1") or addr.startswith("::ffff:127.")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    return start_cluster(tmp_path_factory, request, "local_sh", num_cpus=1)


def test_start_reports_loopback_token_and_client_env(cluster):
    out = cluster.start.stdout
    assert f"export RAY_ADDRESS=http://127.0.0.1:{cluster.dashboard_port} RAY_AUTH_MODE=token" in out
    assert f"export MLFLOW_TRACKING_URI=sqlite:///{cluster.workdir}/mlflow.db" in out
    assert f"ray job submit --address http://127.0.0.1:{cluster.dashboard_port}" in out
    assert "listening on loopback only" in out
    # no token existed in this HOME: the script generated one, and never printed it
    token_file = cluster.home / ".ray" / "auth_token"
    token = token_file.read_text().strip()
    assert len(token) >= 16
    assert token not in out and token not in cluster.start.stderr
    assert (token_file.stat().st_mode & 0o077) == 0, oct(token_file.stat().st_mode)
    # `env` prints only what a shell evaluates: eval "$(cluster/local.sh env)" sets the client environment
    cmd = f'eval "$({SCRIPT} env --port {cluster.port} --temp-dir {cluster.temp_dir})" && echo "$RAY_ADDRESS|$RAY_AUTH_MODE|$MLFLOW_TRACKING_URI"'
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=cluster.env, cwd=cluster.workdir, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"http://127.0.0.1:{cluster.dashboard_port}|token|sqlite:///{cluster.workdir}/mlflow.db"


def test_every_listener_is_on_loopback(cluster):
    expected = {cluster.port, cluster.dashboard_port, cluster.client_port}
    deadline = time.monotonic() + 60  # under load the Ray Client server comes up last
    while True:
        pids = cluster.pids()
        assert pids, "no processes found for the cluster"
        listeners = _listeners(pids)
        ports = {port for _, port, _ in listeners}
        if expected <= ports or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    # the GCS, the dashboard/job server and the Ray Client server, at least
    assert expected <= ports, listeners
    exposed = [(a, p) for a, p, _ in listeners if not _is_loopback(a)]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"


def test_job_server_requires_the_token(cluster):
    url = f"http://127.0.0.1:{cluster.dashboard_port}/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=10)
    assert err.value.code == 401
    env = {**cluster.env, "RAY_ADDRESS": f"http://127.0.0.1:{cluster.dashboard_port}"}
    env.pop("RAY_AUTH_MODE", None)
    env["HOME"] = str(cluster.root)  # no token here either
    proc = subprocess.run(["ray", "job", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "authentication" in (proc.stdout + proc.stderr).lower()


def test_ray_job_submit_with_the_printed_env(cluster, tmp_path):
    env = cluster.client_env()
    assert env["RAY_AUTH_MODE"] == "token"
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "x.py").write_text(
        "import os, ray\n"
        "ray.init()\n"
        "ips = sorted({n['NodeManagerAddress'] for n in ray.nodes()})\n"
        "print('JOB-OK', ray.get(ray.remote(lambda: 6 * 7).remote()), ips, os.environ.get('MLFLOW_TRACKING_URI'))\n"
        # the State API in workers must find this cluster even when other Rays run on the machine
        "print('API', ray.get(ray.remote(lambda: os.environ.get('RAY_API_SERVER_ADDRESS')).remote()))\n"
    )
    proc = subprocess.run(
        ["ray", "job", "submit", "--address", f"http://127.0.0.1:{cluster.dashboard_port}",
         "--working-dir", str(job_dir), "--", "python", "x.py"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"JOB-OK 42 ['127.0.0.1'] sqlite:///{cluster.workdir}/mlflow.db" in out, out[-4000:]
    assert f"API http://127.0.0.1:{cluster.dashboard_port}\n" in out, out[-4000:]


def test_start_again_is_idempotent_and_status_works(cluster):
    before = cluster.pids()
    again = cluster.script("start", "--num-cpus", "1")
    assert "already running" in again.stdout
    assert f"RAY_ADDRESS=http://127.0.0.1:{cluster.dashboard_port}" in again.stdout
    status = cluster.script("status")
    assert "running" in status.stdout and "HTTP 401" in status.stdout
    assert "1.0 CPU" in status.stdout or "0.0/1.0 CPU" in status.stdout, status.stdout
    gcs = {pid for pid in before if Path(f"/proc/{pid}/comm").exists() and Path(f"/proc/{pid}/comm").read_text().strip() == "gcs_server"}
    assert gcs and gcs <= cluster.pids(), "a second start must not restart the cluster"


def test_stop_ends_every_process_and_only_ours(cluster):
    # a bystander process that merely mentions a similar path must survive
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", cluster.temp_dir + "-other", f"--port={cluster.port}"]
    )
    try:
        stop = cluster.script("stop", timeout=120)
        assert "stopped" in stop.stdout
        assert not cluster.pids(), f"left running: {cluster.pids()}"
        assert bystander.poll() is None, "stop killed a process that is not part of the cluster"
        status = cluster.script("status", check=False)
        assert status.returncode == 3 and "not running" in status.stdout
        again = cluster.script("stop")
        assert "nothing to stop" in again.stdout
    finally:
        bystander.kill()
        bystander.wait()
