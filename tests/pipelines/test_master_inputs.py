"""What a master job takes in: each file once, however it was named (no Ray, no mastering)."""

from __future__ import annotations

import os
import shutil

from automaster.pipelines.batch import format_summary
from automaster.pipelines.master_inputs import distinct_inputs, plan_items
from tests.conftest import DATA

SONG = DATA / "music" / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac"


def test_a_file_given_twice_by_any_spelling_or_through_a_folder_is_planned_once(tmp_path):
    shutil.copy(SONG, tmp_path / "a.flac")
    (tmp_path / "d").mkdir()
    shutil.copy(SONG, tmp_path / "d" / "b.flac")
    os.symlink(tmp_path / "a.flac", tmp_path / "link.flac")
    os.symlink("../a.flac", tmp_path / "d" / "c.flac")
    a, dotted = str(tmp_path / "a.flac"), f"{tmp_path}/./a.flac"
    assert distinct_inputs([a, dotted, str(tmp_path / "link.flac")]) == ([a], [(dotted, a), (str(tmp_path / "link.flac"), a)])
    inputs = [a, dotted, str(tmp_path / "d"), str(tmp_path / "d" / "b.flac"), str(tmp_path / "link.flac")]
    items, passed, collisions = plan_items(inputs, ())
    assert sorted(os.path.basename(it["path"]) for it in items) == ["a.flac", "b.flac"]  # each file once
    assert collisions == []
    repeats = {os.path.relpath(p["path"], tmp_path): p for p in passed}
    assert set(repeats) == {"a.flac", "link.flac", "d/b.flac", "d/c.flac"}
    assert repeats["d/c.flac"]["reason"] == f"the same file as {a}: mastered once" and repeats["d/c.flac"]["repeat_of"] == a
    summary = {"ok": 2, "failed": 0, "skipped": 0, "passed_over": len(passed), "mode": "in-process", "repairs": {},
               "out": "/o", "failures": [], "log_file": "/o/log", "name_collisions": [], "passed_over_files": passed,
               "mlflow_run_id": "r", "tracking_uri": "sqlite:///x"}  # fmt: skip
    lines = format_summary("master", summary).splitlines()
    assert sum(line.startswith("  passed over: ") for line in lines) == 4  # each repeat said, once
