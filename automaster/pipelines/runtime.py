"""Starting or joining Ray, loopback-only when local.

``python jobs/x.py`` (or ``automaster x``) starts a private single-machine Ray bound to
127.0.0.1; inside ``ray job submit`` (``RAY_ADDRESS`` is set) the job joins its cluster.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

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


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a loopback-only local Ray.

    ``dashboard``: start the local Ray with its dashboard on 127.0.0.1 (the State API it serves
    is what lets Ray Train free the resources of Tune trials stopped early).
    """
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # Ray reads this once, when first imported: set it before the import below.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if ray.is_initialized():
        return
    if address:
        log.info("joining Ray at %s", address)
        ray.init(address=address, logging_level=logging.WARNING)
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
    ray.init(num_cpus=num_cpus, logging_level=logging.WARNING, runtime_env={"env_vars": env_vars}, **kwargs)
    node_ip = ray.util.get_node_ip_address()
    log.info("started a local Ray on %s (%s CPUs)", node_ip, num_cpus or os.cpu_count())
    if node_ip != "127.0.0.1":
        ray.shutdown()
        raise RuntimeError(f"the local Ray bound {node_ip}, not 127.0.0.1; refusing to run it on the network")


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


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
