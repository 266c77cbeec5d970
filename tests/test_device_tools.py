"""tools/device_stage.py as a user runs it: usage errors exit 2 in one line and create nothing, a
corpus with nothing to stage is refused before anything is written, a staged corpus holds no
test-split song, and a failed or interrupted stage never blocks the next one."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from automaster.corpus import scan_corpus
from tests.conftest import DATA, REPO

MUSIC = DATA / "music"  # one training-split song and two test-split ones (the folder's hash split)


def _stage(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "tools" / "device_stage.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--budget-mb", "nan"], "--budget-mb"),
        (["--budget-mb", "0"], "--budget-mb"),
        (["--seconds", "0.001"], "--seconds"),
        (["--seconds", "inf"], "--seconds"),
        (["--val-songs", "-1"], "--val-songs"),
        (["--quality", "2"], "--quality"),
    ],
)
def test_bad_values_exit_2_in_one_line_and_create_nothing(tmp_path, extra, flag):
    out = tmp_path / "stage"
    proc = _stage("--audio", str(MUSIC), "--out", str(out), *extra)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and flag in proc.stderr
    assert not out.exists()


def test_out_that_is_a_file_exits_2(tmp_path):
    out = tmp_path / "a file"
    out.write_text("x")
    proc = _stage("--audio", str(MUSIC), "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--out" in proc.stderr, proc.stderr


def test_a_corpus_of_test_songs_only_is_refused_before_writing(tmp_path):
    root = tmp_path / "fma"
    (root / "fma_metadata").mkdir(parents=True)
    (root / "fma_small" / "000").mkdir(parents=True)
    shutil.copy(MUSIC / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac", root / "fma_small" / "000" / "000010.flac")
    with open(root / "fma_metadata" / "tracks.csv", "w", newline="") as f:
        csv.writer(f).writerows([["", "set", "set", "track"], ["", "split", "subset", "genre_top"],
                                 ["track_id", "", "", ""], [10, "test", "small", "Classical"]])  # fmt: skip
    assert [t.split for t in scan_corpus(str(root)).tracks] == ["test"]
    out = tmp_path / "stage"
    proc = _stage("--audio", str(root), "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--audio" in proc.stderr and "test-split" in proc.stderr
    assert not (out / "corpus").exists()


def test_a_budget_below_one_excerpt_leaves_nothing_and_a_rerun_stages(tmp_path):
    out = tmp_path / "stage"
    proc = _stage("--audio", str(MUSIC), "--out", str(out), "--seconds", "8", "--budget-mb", "0.001")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --budget-mb"), proc.stderr
    assert not (out / "corpus").exists() and not (out / "corpus.partial").exists()

    proc = _stage("--audio", str(MUSIC), "--out", str(out), "--seconds", "8")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(out / "corpus" / "STAGED.csv")))
    assert [r["split"] for r in rows] == ["training"]  # the two test-split songs are never staged
    assert [t.split for t in scan_corpus(str(out / "corpus")).tracks] == ["training"]
    assert not (out / "corpus.partial").exists()

    again = _stage("--audio", str(MUSIC), "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr


def test_an_interrupted_stage_does_not_block_the_next(tmp_path):
    out = tmp_path / "stage"
    (out / "corpus.partial" / "fma_small" / "000").mkdir(parents=True)  # what a killed run leaves
    (out / "corpus.partial" / "fma_small" / "000" / "000001.ogg").write_bytes(b"cut off")
    proc = _stage("--audio", str(MUSIC), "--out", str(out), "--seconds", "8")
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "corpus" / "fma_small").rglob("*.ogg"))) == 1


@pytest.mark.parametrize(
    ("env", "minutes", "word"),
    [({}, "abc", "MINUTES"), ({}, "0", "MINUTES"), ({"BATCH": "4x"}, "1", "BATCH"), ({"STAGE": "/no/such/stage"}, "1", "STAGE")],
)
def test_device_train_bad_arguments_exit_2_in_one_line(tmp_path, env, minutes, word):
    stage = tmp_path / "stage"
    (stage / "corpus").mkdir(parents=True)
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path / "out"), "STAGE": str(stage), **env}
    proc = subprocess.run(["bash", str(REPO / "tools" / "device_train.sh"), minutes], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and word in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
