"""One command retrains each model: the Makefile's retrain-* targets run the right script or job."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

from automaster.cli import build_parser
from tests.conftest import REPO


def _plan(target: str, corpus: str) -> str:
    """What ``make TARGET`` would run (the install step taken as done)."""
    # run from `make test`, make would say which directory it enters: a make of its own, silent
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.installed", target, f"CORPUS={corpus}"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace("\\\n", " ")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_each_model_has_a_retrain_target():
    assert "models/train_reference.sh /data/fma results/reference" in _plan("retrain-reference", "/data/fma /data/debian")
    assert "models/train_level.sh /data/fma /data/debian" in _plan("retrain-level", "/data/fma /data/debian")
    line = _plan("retrain-compressor", "/data/fma /data/debian").strip()
    argv = shlex.split(line)
    assert argv[0].endswith("automaster")
    args = build_parser().parse_args(argv[1:])  # every flag is one the command takes
    assert args.command == "train-compressor" and args.corpus == ["/data/fma", "/data/debian"] and args.samples > 0
