"""A local Ray started by the jobs binds 127.0.0.1 only, even when ray was imported first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
