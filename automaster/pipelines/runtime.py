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


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a loopback-only local Ray."""
    import ray

    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray at %s", address)
        ray.init(address=address, logging_level=logging.WARNING)
        return
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    log.info("starting a local Ray on 127.0.0.1 (%s CPUs)", num_cpus or os.cpu_count())
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        # Workers must import automaster even when it is not installed (a plain checkout).
        runtime_env={"env_vars": {"PYTHONPATH": _pythonpath(), **WORKER_ENV}},
    )


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
