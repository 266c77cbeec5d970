"""Starting or joining Ray, loopback-only when local; refusing local paths on a multi-node cluster.

``python jobs/x.py`` (or ``automaster x``) starts a private single-machine Ray bound to
127.0.0.1; inside ``ray job submit`` (``RAY_ADDRESS`` is set) the job joins its cluster.
:func:`check_paths_visible` stops a job early when it was given a local path that workers on
other machines of the cluster cannot see.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from automaster import storage
from automaster.config import ConfigError

log = logging.getLogger(__name__)

# A local cluster listens on loopback only: with this set Ray takes 127.0.0.1 as its node IP
# and binds every listener there (see PLATFORM.md); a routable address would expose the
# dashboard and object store to the network.
LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


# glibc malloc: keep large blocks on the heap and don't hand them back after every track. Each
# clip allocates and frees tens of MB of tensors; with the defaults every one is a fresh mmap and
# page faults cost more than the FFTs (measured: 0.53 -> 0.40 s per 30 s track). Read by glibc at
# process start, so they go into the workers' runtime_env.
WORKER_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
}


def in_ray_job() -> bool:
    """True inside a job started by ``ray job submit``."""
    return bool(os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_ADDRESS"))


def init_ray(
    address: str | None = None, num_cpus: int | None = None, dashboard: bool = False, log_to_driver: bool = True
) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a loopback-only local Ray.

    ``dashboard``: start the local Ray with its dashboard on 127.0.0.1 (the State API it serves
    is what lets Ray Train free the resources of Tune trials stopped early). ``log_to_driver``:
    echo the workers' output on this process's console (batch jobs turn it off: their workers
    log to the job's log file).
    """
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # Ray reads this once, when first imported: set it before the import below.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if not log_to_driver:
        loggers_to_root(RAY_LOGGERS)
    if ray.is_initialized():
        return
    if address:
        log.info("joining Ray at %s", address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)
        terminate_as_interrupt()
        return
    from ray._private import ray_constants

    # If something imported ray before the variable was set, the variable alone is not enough.
    ray_constants.ENABLE_RAY_CLUSTER = False
    # Workers must import automaster even when it is not installed (a plain checkout).
    env_vars = {"PYTHONPATH": _pythonpath(), **WORKER_ENV}
    kwargs: dict = {"include_dashboard": False}
    if dashboard:
        port = _free_port(8265)
        api = f"http://127.0.0.1:{port}"
        # The State API finds "the" local Ray by scanning processes and gives up when another Ray
        # runs on the machine: name this one's dashboard, here and in every worker.
        os.environ["RAY_API_SERVER_ADDRESS"] = api
        env_vars["RAY_API_SERVER_ADDRESS"] = api
        kwargs = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}
    # address="local": always a new Ray of our own. Plain ray.init() would join any cluster already
    # running on the machine (a `ray start` head, another user's job), with its auth and resources.
    ray.init(
        address="local", num_cpus=num_cpus, logging_level=logging.WARNING, log_to_driver=log_to_driver,
        runtime_env={"env_vars": env_vars}, **kwargs,
    )
    start_reaper()
    terminate_as_interrupt()
    node_ip = ray.util.get_node_ip_address()
    log.info("started a local Ray on %s (%s CPUs)", node_ip, num_cpus or os.cpu_count())
    if node_ip != "127.0.0.1":
        ray.shutdown()
        raise RuntimeError(f"the local Ray bound {node_ip}, not 127.0.0.1; refusing to run it on the network")


TERMINATED = "terminated (SIGTERM); finished outputs are kept and a re-run of the same command resumes"


def terminate_as_interrupt() -> None:
    """SIGTERM (a ``kill``, ``ray job stop``, a scheduler) ends a job as Ctrl-C does: its clean-up
    runs and the command says so in one line. ray.init puts abseil's handler first, which dumped
    a C++ stack on the console and aborted (exit 134) when Ray's shutdown took over 3 s."""
    import signal
    import threading

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(TERMINATED)

    if threading.current_thread() is threading.main_thread():  # signals are set from the main thread only
        signal.signal(signal.SIGTERM, terminated)


# ------------------------------------------------------------------------ a local Ray's reaper

# Runs beside a driver that started its own Ray. While the driver lives it notes, every
# half second, every process descended from the Ray processes the driver started (the raylet's
# agents and workers among them: Ray renames them, so neither their command line nor their
# environment names the session). When the driver is gone (its end of the pipe on our stdin
# closes: a normal exit, an exception or a kill -9 alike), it stops those still alive: TERM, then
# KILL a second later. Without it, the DashboardAgent and RuntimeEnvAgent of a killed driver stay
# up for more than a minute (their raylet check ends in a GCS call that retries for 60 s).
_REAPER = r"""
import os, select, signal, sys, time
roots = {int(p) for p in sys.argv[1:]}
def table():
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                procs[int(name)] = (int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                pass
    return procs
seen = {}
def note():
    procs = table()
    mine = {p for p in roots if p in procs}
    grew = True
    while grew:
        more = {p for p, (ppid, _) in procs.items() if ppid in mine} - mine
        grew = bool(more)
        mine |= more
    for p in mine:
        seen.setdefault(p, procs[p][1])
    return procs
while True:
    procs = note()
    if not any(p in procs and procs[p][1] == start for p, start in seen.items()):
        sys.exit(0)  # the driver shut its Ray down and lives on: nothing left to watch
    ready, _, _ = select.select([sys.stdin], [], [], 0.5)
    if ready and not os.read(sys.stdin.fileno(), 4096):
        break
for sig in (signal.SIGTERM, signal.SIGKILL):
    note()
    procs = table()
    alive = [p for p, start in seen.items() if p in procs and procs[p][1] == start]
    if not alive:
        break
    for p in alive:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    time.sleep(1.0)
"""
_reapers: list = []  # the Popen objects: their stdin pipes must stay open while this process lives


def start_reaper() -> None:
    """Start the reaper (:data:`_REAPER`) of the local Ray this process just started (Linux)."""
    import subprocess
    import sys

    import ray

    if not sys.platform.startswith("linux"):
        return
    node = ray._private.worker._global_node
    roots = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process is not None]
    if not roots:
        return
    reaper = subprocess.Popen(
        [sys.executable, "-c", _REAPER, *map(str, roots)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,  # a Ctrl-C to the job's group must not stop it first
    )
    _reapers.append(reaper)
    log.info("reaper %d watches the local Ray's processes %s", reaper.pid, roots)


RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


def loggers_to_root(names: tuple[str, ...]) -> None:
    """These loggers through the root logger (a job's log file) instead of the console handlers
    their libraries install on import (Ray's, MLflow's)."""
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data without its progress bars and through the root logger (a job's log file) unless
    ``verbose``; call in the driver and in each worker (Ray Data configures its logger on import)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = verbose
    if not verbose:
        loggers_to_root(("ray.data",))
        logging.getLogger("ray.data").setLevel(logging.INFO)  # its config logs everything from DEBUG up


def _free_port(preferred: int) -> int:
    """``preferred`` if nothing listens there on 127.0.0.1, else a free port."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{existing}" if existing else root


def cluster_cpus() -> int:
    """CPUs of the whole cluster (at least 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_memory_bytes() -> float:
    """Memory Ray may schedule on the whole cluster (its ``memory`` resource), in bytes."""
    import ray

    return float(ray.cluster_resources().get("memory", 0.0))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


# ------------------------------------------------------------------------ paths on a cluster

# Colon-separated folders that are the same file system at the same path on every node (an NFS,
# EFS or Filestore mount, a Kubernetes volume): local paths under them are fine on a cluster.
SHARED_PATHS_ENV = "AUTOMASTER_SHARED_PATHS"
# Flags that name where a job writes; the others are read. A job's working_dir copy is unpacked on
# every node, so reading under it works anywhere, but what is written there stays on one node.
OUTPUT_FLAGS = frozenset({"--out"})


class LocalPathError(ConfigError):
    """A local path given to a job on a cluster whose other machines cannot see it.

    A :class:`~automaster.config.ConfigError`: the command line reports it as a usage error
    (one line, exit code 2) before any work starts.
    """


def shared_paths(environ: Mapping[str, str] | None = None) -> list[str]:
    """The folders declared shared in ``$AUTOMASTER_SHARED_PATHS``, absolute."""
    value = (os.environ if environ is None else environ).get(SHARED_PATHS_ENV, "")
    return [os.path.abspath(os.path.expanduser(p.strip())) for p in value.split(os.pathsep) if p.strip()]


def _under(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives (Windows)
        return False


def invisible_paths(
    paths: Mapping[str, str | None],
    nodes: int,
    shared: list[str] | tuple[str, ...] = (),
    job_dir: str | None = None,
) -> list[tuple[str, str]]:
    """The ``(flag, value)`` pairs of ``paths`` that workers on other nodes could not see.

    The pure decision behind :func:`check_paths_visible`. On one node (``nodes <= 1``) every
    path is fine. On more, a value is fine when it is a URI of a shared file system (``s3://``,
    ``gs://``, ``hdfs://``, ...: anything but a plain path or ``file://``), lies under one of the
    ``shared`` folders, or is an input (not in :data:`OUTPUT_FLAGS`) under ``job_dir``, the job's
    working directory, which Ray unpacks on every node. Empty values are skipped.
    """
    if nodes <= 1:
        return []
    folders = {f for s in shared for f in (os.path.abspath(s), os.path.realpath(s))}
    bad = []
    for flag, value in paths.items():
        if value is None or os.fspath(value) == "":
            continue
        value = os.fspath(value)
        if not storage.is_local(value):
            continue
        path = storage.local_path(value)
        forms = {path, os.path.realpath(path)}
        if any(_under(p, f) for p in forms for f in folders):
            continue
        if job_dir and flag not in OUTPUT_FLAGS and any(_under(p, os.path.realpath(job_dir)) or _under(p, job_dir) for p in forms):
            continue
        bad.append((flag, value))
    return bad


def cluster_machines() -> tuple[int, str]:
    """``(machines, description)`` of the connected Ray cluster, from its alive nodes.

    A single alive node with neither CPUs nor GPUs (the head of ``cluster/aws.yaml`` or the
    KubeRay manifests, ``num-cpus: 0``) counts as two: every task will run on worker nodes the
    autoscaler has yet to start.
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) == 1:
        res = alive[0].get("Resources", {})
        if not res.get("CPU") and not res.get("GPU"):
            return 2, "has a single node without CPUs or GPUs: the work will run on worker nodes that the autoscaler adds"
    return len(alive), f"has {len(alive)} alive nodes"


def _job_dir() -> str | None:
    """The working directory of a submitted job (Ray's copy of its ``working_dir``), else None."""
    cwd = os.getcwd()
    return cwd if in_ray_job() and "runtime_resources" in cwd else None


def check_paths_visible(paths: Mapping[str, str | None]) -> None:
    """Refuse local paths that other machines of the connected cluster cannot see.

    Call after :func:`init_ray`, with the job's path flags, e.g. ``{"--data": data, "--out":
    out}``. On a single-node cluster (a laptop, ``cluster/local.sh``) nothing is checked.

    Raises:
        LocalPathError: naming each flag and path, and the two fixes (a URI, or
            ``AUTOMASTER_SHARED_PATHS`` for a mount that every node has).
    """
    machines, described = cluster_machines()
    bad = invisible_paths(paths, machines, shared_paths(), _job_dir())
    if not bad:
        return
    listed = ", ".join(f"{flag} {value}" for flag, value in bad)
    first = storage.local_path(bad[0][1])
    mount = "/" + first.strip("/").split("/")[0] if first.strip("/") else "/"
    declared = os.environ.get(SHARED_PATHS_ENV)
    what, it = ("local paths", "them") if len(bad) > 1 else ("a local path", "it")
    raise LocalPathError(
        f"{listed}: {what}, but this Ray cluster {described}, and workers on other machines cannot see "
        f"{it} (each node would read and write its own disk). Fix: pass a URI on shared storage "
        "(s3://BUCKET/..., gs://BUCKET/...) or, for a file system mounted at the same path on every node "
        f"(NFS, EFS, a Kubernetes volume), declare it shared: {SHARED_PATHS_ENV}={mount} (colon-separated "
        "folders, in the job's runtime_env env_vars or in every node's environment)"
        + (f"; {SHARED_PATHS_ENV} is now {declared!r}" if declared else "")
    )
