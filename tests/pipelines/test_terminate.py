"""A folder job stopped by SIGTERM (a kill, `ray job stop`, a scheduler) on real Ray: one line, exit
130, the finished files kept, nothing half-written, and the same command resumes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from automaster.pipelines.runtime import TERMINATED
from tests.conftest import REPO

SONG = REPO / "tests" / "data" / "music" / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.mark.slow
def test_sigterm_during_a_ray_folder_job_is_one_line_and_the_rerun_resumes(tmp_path):
    """Before: Ray's abseil handler printed a C++ stack ('*** SIGTERM received ...') and aborted (exit 134)."""
    (tmp_path / "in").mkdir()
    for n in range(24):
        shutil.copy(SONG, tmp_path / "in" / f"song{n:02d}.flac")
    cmd = [sys.executable, "-m", "automaster.cli", "master", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
           "--ray", "--workers", "2", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV)
    items = tmp_path / "out" / ".automaster" / "items"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (items.is_dir() and len(list(items.iterdir())) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == f"automaster master: {TERMINATED}" and "SIGTERM received" not in err, err[-3000:]
    done = len(list(items.iterdir()))
    assert 2 <= done < 24 and len(list((tmp_path / "out" / "audio").iterdir())) == done  # each kept file has its record
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"master: {24 - done} ok, 0 failed, {done} skipped" in again.stdout
