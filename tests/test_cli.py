"""The ``automaster`` command as a newcomer meets it: --version, --help, and a demo that runs twice."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

import automaster
from tests.conftest import REPO

CLI = [sys.executable, "-m", "automaster.cli"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _run(*args: str, timeout: float = 120, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout)


def test_version_prints_the_package_version():
    proc = _run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"automaster {automaster.__version__}\n"
    assert automaster.__version__ == importlib.metadata.version("automaster")  # pyproject reads the same string


def test_help_opens_with_what_it_does_for_a_user():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    head = proc.stdout.split("\n\n")[1]  # after the usage line
    assert head.startswith("Master your music"), head
    assert "entry points" not in proc.stdout
    commands = re.findall(r"^    (\w+) ", proc.stdout, flags=re.M)
    assert commands[:2] == ["master", "demo"] and {"demaster", "train", "tune", "evaluate", "compare"} <= set(commands)
    assert "automaster master --input song.wav --out mastered.wav" in proc.stdout


@pytest.mark.slow
def test_the_demo_runs_twice_in_the_same_folder(tmp_path):
    """A second run resumes the demaster step (counted as skipped), trains afresh and masters again
    (before: exit 2 from the mastering folder holding the previous model's outputs)."""
    args = ["demo", "--out", str(tmp_path / "demo"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--epochs", "1", "--set", "train.steps_per_epoch=30"]  # fmt: skip
    first = _run(*args, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "demaster: 3 ok, 0 failed, 0 skipped" in first.stdout
    second = _run(*args, timeout=600, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "demaster: 0 ok, 0 failed, 3 skipped" in second.stdout
    assert "master: 2 ok, 0 failed" in second.stdout and "renamed" not in first.stdout + second.stdout  # a file per song
    assert f"Reports: {tmp_path / 'demo' / 'mastered' / 'report'}" in second.stdout
    assert "ui --backend-store-uri sqlite:///" in second.stdout
    verdict = re.search(r"The demo's model: beat the damaged input by ([0-9.]+) dB of level error", second.stdout)
    assert verdict and float(verdict.group(1)) > 0.5, second.stdout[-2000:]
    assert len(list((tmp_path / "demo" / "mastered" / "report").glob("*.json"))) == 2


def test_the_demo_masters_each_bundled_song_once_under_its_own_name():
    """The bundled music holds a song as FLAC and MP3 (for the decoders' tests): mastered both, they
    took one FLAC name and the demo ended with a 'renamed' line."""
    from automaster.cli.demo import demo_inputs
    from automaster.pipelines.master_inputs import plan_items

    inputs = demo_inputs(REPO / "tests" / "data" / "music")
    items, passed, collisions = plan_items(inputs, ())
    assert collisions == [] and passed == []
    assert sorted(os.path.basename(p) for p in inputs) == ["d01_librosa_brahms_hungarian_dance_5.flac",
                                                           "d02_librosa_kevin_macleod_sugar_plum_fairy.flac"]
