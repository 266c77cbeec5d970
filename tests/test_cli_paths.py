"""Paths on the command line: inside a submitted Ray job (its working directory a temporary copy)
a relative path is refused in one line that names the flag."""

from __future__ import annotations

import pytest

from automaster.cli.common import UsageError, location, out_location


@pytest.fixture
def in_submitted_job(tmp_path, monkeypatch):
    """The environment and working directory a `ray job submit` entrypoint has."""
    work = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    work.mkdir(parents=True)
    monkeypatch.setenv("RAY_JOB_SUBMISSION_ID", "raysubmit_test")
    monkeypatch.chdir(work)


@pytest.mark.usefixtures("in_submitted_job")
def test_a_relative_path_in_a_submitted_job_names_its_flag(tmp_path):
    with pytest.raises(UsageError, match=r"^--input 'tests/data/music' is a relative path inside a submitted Ray job"):
        location("tests/data/music", must_exist=True, flag="--input")
    with pytest.raises(UsageError, match=r"^--out 'results/x' is a relative path"):
        out_location("results/x")
    assert location(str(tmp_path)) == str(tmp_path)  # absolute paths pass
