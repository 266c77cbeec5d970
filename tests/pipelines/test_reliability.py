"""Issue 15, one test per problem: hostile names, settings changes, locks, collisions, bad
arguments, inputs that hang, what the summary accounts for. In-process runs (no Ray needed: the
batch skeleton is the same code; its Ray-only guarantees are in test_batch.py)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from automaster import storage
from automaster.audio import AudioError, read_audio
from automaster.cli import main
from automaster.config import load_config
from automaster.corpus import folder_track_id
from automaster.dsp.limiter import MASTER_MAX_GAIN_DB, master_loudness
from automaster.pipelines.batch import format_summary
from automaster.pipelines.demaster import run_demaster
from automaster.pipelines.master import dc_dbfs, level_notes, plan_output_names, run_master
from automaster.pipelines.outfolder import OutputFolder
from tests.audio_fixtures import make_good_inputs
from tests.test_mastering import make_checkpoint

ODD = os.fsdecode(b"\xff\xfe.wav")  # a name that is not UTF-8: a surrogate-escaped str


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_good_inputs(tmp_path_factory.mktemp("good"), duration_s=1.5)


def test_a_name_too_long_for_its_report_is_shortened_not_failed(ckpt, good, tmp_path, uri):
    """A 255-byte name is legal, but its report (``report/<name>.json``) is not (before: the file
    failed with 'OSError: [Errno 36] File name too long'). Its outputs get a shorter name, the same
    on every run, listed as a rename."""
    long = "Ü" * 120 + "L" * 11 + ".wav"  # 255 bytes in UTF-8
    plan, collisions = plan_output_names([long, "L" * 251 + ".mp3", "short.wav"])
    assert plan["short.wav"] == "short.wav" and plan == plan_output_names([long, "L" * 251 + ".mp3", "short.wav"])[0]
    for rel in (long, "L" * 251 + ".mp3"):
        assert len(os.fsencode(plan[rel] + ".json")) <= 255 and plan[rel].endswith((".wav", ".flac"))
        assert plan[rel].startswith(rel[:100]) and plan[rel] in [c["output"][len("audio/"):] for c in collisions]
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / long)
    summary = _master(ckpt, folder, tmp_path / "out", uri)
    assert summary["ok"] == 1, summary["failures"]
    assert os.listdir(tmp_path / "out" / "audio") == [plan[long]]
    assert os.listdir(tmp_path / "out" / "report") == [plan[long] + ".json"]


def test_a_folder_automaster_did_not_make_keeps_the_users_files(ckpt, good, tmp_path, uri, capsys):
    """--out pointed at a folder of the user's that holds audio/<name> or a summary.json: refused
    in one line, nothing replaced (before: the user's audio/a.wav was overwritten, exit 0);
    --overwrite writes into it."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    theirs = tmp_path / "mine"
    (theirs / "audio").mkdir(parents=True)
    (theirs / "audio" / "a.wav").write_bytes(b"the user's own take")
    assert _cli("--input", str(folder), "--out", str(theirs), "--no-ray", "--tracking-uri", uri) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds audio, which automaster did not write" in err[0], err
    assert (theirs / "audio" / "a.wav").read_bytes() == b"the user's own take"
    assert not (theirs / "report").exists() and not (theirs / "summary.json").exists()
    summary = _master(ckpt, folder, theirs, uri, overwrite=True)
    assert summary["ok"] == 1 and read_audio(str(theirs / "audio" / "a.wav"))[0].shape[0] == 2


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _master(ckpt, folder, out, uri, **kw):
    return run_master(ckpt, str(folder), str(out), tracking_uri=uri, progress=False, ray=False, **kw)


def _cli(*args):
    return main(["master", *args])


# 1. ---------------------------------------------------------------------- names not in UTF-8


def test_names_that_are_not_utf8_round_trip(ckpt, good, tmp_path, uri):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], os.path.join(folder, ODD))
    assert storage.exists(os.path.join(folder, ODD)) and storage.is_file(os.path.join(folder, ODD))
    assert folder_track_id(ODD).startswith("wav-") or folder_track_id(ODD).startswith("track-")
    summary = _master(ckpt, folder, tmp_path / "out", uri)
    assert summary["ok"] == 1, summary["failures"]
    assert os.listdir(tmp_path / "out" / "audio") == [ODD]  # the same bytes as the input's name
    assert read_audio(os.path.join(tmp_path / "out" / "audio", ODD))[0].shape[0] == 2
    config = load_config(overrides=["demaster.clip_seconds=1", "demaster.min_seconds=0.5"])
    dm = run_demaster(str(folder), str(tmp_path / "dm"), config, tracking_uri=uri, ray=False, progress=False)
    assert dm["ok"] == 1, dm["failures"]


# 2. ---------------------------------------------------------------------- settings and locks


def test_rerun_with_other_settings_is_refused_unless_overwrite(ckpt, good, tmp_path, uri, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    out = tmp_path / "out"
    common = ["--model", ckpt, "--input", str(folder), "--out", str(out), "--tracking-uri", uri, "--no-ray"]
    assert _cli(*common, "--target-lufs", "-18") == 0
    capsys.readouterr()
    assert _cli(*common, "--target-lufs", "-14") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "target_lufs: -18.0 -> -14.0" in err[0] and "--overwrite" in err[0]
    assert _cli(*common, "--target-lufs", "-14", "--overwrite") == 0
    done = json.loads((out / "summary.json").read_text())["files"][0]
    assert abs(done["lufs_after"] - -14.0) < 0.5 and done["status"] == "ok"
    # demaster: a refused re-run leaves the dataset's metadata as it was
    config = load_config(overrides=["demaster.clip_seconds=1", "demaster.min_seconds=0.5"])
    run_demaster(str(folder), str(tmp_path / "dm"), config, tracking_uri=uri, ray=False, progress=False)
    capsys.readouterr()
    meta = (tmp_path / "dm" / "dataset_meta.json").read_bytes()
    code = main(["demaster", "--corpus", str(folder), "--out", str(tmp_path / "dm"), "--seed", "7", "--clip-seconds", "1",
                 "--min-seconds", "0.5", "--tracking-uri", uri])
    assert code == 2 and "demaster.seed: 0 -> 7" in capsys.readouterr().err
    assert (tmp_path / "dm" / "dataset_meta.json").read_bytes() == meta


def test_a_second_run_into_a_busy_folder_exits_2(ckpt, good, tmp_path, uri, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    holder = OutputFolder(str(tmp_path / "out"))
    holder.acquire_lock("master")  # as a run in another process would
    try:
        code = _cli("--model", ckpt, "--input", str(folder), "--out", str(tmp_path / "out"), "--tracking-uri", uri)
    finally:
        holder.release_lock()
    err = capsys.readouterr().err
    assert code == 2 and "another run is writing into this folder" in err and f"pid {os.getpid()}" in err


# 4. ---------------------------------------------------------------------- output names


def test_output_names_differ_in_more_than_case():
    """On macOS, Windows or a FAT drive A.flac and a.flac are one file: A.mp3's output would have
    overwritten a.flac's (found by the session 9 audit)."""
    plan, collisions = plan_output_names(["A.mp3", "a.flac", "b.wav", "B.WAV", "c.flac"])
    assert plan == {"a.flac": "a.flac", "A.mp3": "A.mp3.flac", "B.WAV": "B.WAV", "b.wav": "b~2.wav", "c.flac": "c.flac"}
    assert len({out.casefold() for out in plan.values()}) == len(plan)
    reasons = {c["rel_path"]: c["reason"] for c in collisions}
    assert reasons == {
        "A.mp3": "audio/a.flac is the output of another input (the same name as A.flac but for case: one file on macOS and Windows)",
        "b.wav": "audio/B.WAV is the output of another input (the same name as b.wav but for case: one file on macOS and Windows)",
    }


def test_output_names_unique_by_construction_and_collisions_reported(ckpt, good, tmp_path, uri):
    plan, collisions = plan_output_names(["z.mp3", "z.flac", "z.mp3.flac"])
    assert plan == {"z.flac": "z.flac", "z.mp3.flac": "z.mp3.flac", "z.mp3": "z.mp3~2.flac"}
    assert [c["rel_path"] for c in collisions] == ["z.mp3"]
    assert plan_output_names(["b.mp3", "a.mp3"])[0] == {"a.mp3": "a.flac", "b.mp3": "b.flac"}
    folder = tmp_path / "in"
    folder.mkdir()
    for name, key in (("z.mp3", "mp3"), ("z.flac", "wav16"), ("z.mp3.flac", "wav24_48k")):
        data, sr = sf.read(good[key], dtype="float32")
        sf.write(folder / name, data, sr, format="MP3" if name.endswith(".mp3") else "FLAC")
    summary = _master(ckpt, folder, tmp_path / "out", uri)
    assert summary["ok"] == 3
    assert sorted(os.listdir(tmp_path / "out" / "audio")) == ["z.flac", "z.mp3.flac", "z.mp3~2.flac"]
    assert summary["name_collisions"] == collisions


def test_out_inside_or_equal_to_input_is_not_taken_as_input(ckpt, good, tmp_path, uri):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    inside = _master(ckpt, folder, folder / "mastered", uri)
    again = _master(ckpt, folder, folder / "mastered", uri)
    assert (inside["ok"], again["skipped"], again["ok"], again["passed_over"]) == (1, 1, 0, 0)
    assert not (folder / "mastered" / "audio" / "mastered").exists()
    shutil.rmtree(folder / "mastered")
    same = _master(ckpt, folder, folder, uri)
    twice = _master(ckpt, folder, folder, uri)
    assert same["ok"] == 1 and (twice["ok"], twice["skipped"], twice["passed_over"]) == (0, 1, 0)
    assert not (folder / "audio" / "audio").exists()


# 5. ---------------------------------------------------------------------- arguments


@pytest.mark.parametrize("args, named", [
    (["--target-lufs", "10"], "--target-lufs 10"),
    (["--target-lufs", "-80"], "--target-lufs -80"),
    (["--true-peak", "1"], "--true-peak 1"),
    (["--workers", "-1"], "--workers -1"),
])
def test_bad_master_arguments_exit_2_before_ray(ckpt, good, tmp_path, capsys, args, named):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    code = _cli("--model", ckpt, "--input", str(folder), "--out", str(tmp_path / "out"),
                "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and named in err[0]
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "out").exists()  # nothing started


def test_bad_paths_exit_2_in_one_line(ckpt, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cases = [
        (["master", "--model", ckpt, "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "file")], "--out"),
        (["master", "--model", ckpt, "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "no audio files"),
        (["master", "--model", ckpt, "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "--input"),
        (["demaster", "--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "no audio files"),
        (["demaster", "--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--workers", "-1"], "--workers -1"),
    ]
    for argv, named in cases:
        code = main([*argv, "--tracking-uri", uri])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and named in err[0], (argv, err)
    assert not (tmp_path / "m.db").exists()


def test_loudness_gain_is_capped_and_levels_are_explained():
    sr = 44100
    t = np.arange(2 * sr) / sr
    quiet = (0.001 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # about -63 LUFS
    _, stats = master_loudness(quiet, sr, 10.0, -1.0)
    assert stats["gain_db"] == pytest.approx(MASTER_MAX_GAIN_DB)
    notes = level_notes(dc_dbfs(quiet), {"lufs_before": stats["lufs_before"]}, 10.0)
    assert len(notes) == 1 and "limited to +24 dB" in notes[0]
    offset = (0.3 + 0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    assert any("DC offset of -10.5 dBFS" in n for n in level_notes(dc_dbfs(offset), {"lufs_before": -30.0}, -14.0))


# 6-7. ------------------------------------------------------------------- hangs, and the summary


def test_fifo_skipped_unreadable_reasons_repairs_and_passed_over_all_in_the_summary(ckpt, good, tmp_path, uri):
    folder = tmp_path / "in"
    (folder / "real").mkdir(parents=True)
    shutil.copy(good["wav16"], folder / "a.wav")
    os.mkfifo(folder / "pipe.wav")  # opening it would block forever
    (folder / "..wav").write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    os.symlink(folder / "real", folder / "linked")
    data, sr = sf.read(good["wav16"], dtype="float32")
    data[100:110] = np.nan
    sf.write(folder / "nan.wav", data, sr, subtype="FLOAT")
    with pytest.raises(AudioError, match="FIFO"):
        read_audio(folder / "pipe.wav")
    summary = _master(ckpt, folder, tmp_path / "out", uri)
    assert (summary["ok"], summary["failed"], summary["passed_over"]) == (2, 0, 4)
    reasons = {Path(p["path"]).name: p["reason"] for p in summary["passed_over_files"]}
    assert "FIFO" in reasons["pipe.wav"] and "hidden" in reasons["..wav"]
    assert "not an audio file" in reasons["notes.txt"] and "symbolic link" in reasons["linked"]
    assert summary["repairs"] == {"nonfinite_zeroed": {"files": 1, "count": 20}}
    assert "  repaired: 20 non-finite samples set to 0 in 1 file" in format_summary("master", summary).splitlines()
    assert summary["total"] == 6


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_reason_says_permission(tmp_path, good):
    target = tmp_path / "locked.wav"
    shutil.copy(good["wav16"], target)
    target.chmod(0)
    with pytest.raises(AudioError, match="permission denied"):
        read_audio(target)


def test_resumed_summary_keeps_the_levels_of_skipped_files(ckpt, good, tmp_path, uri):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    first = _master(ckpt, folder, tmp_path / "out", uri, target_lufs=-16.0)
    again = _master(ckpt, folder, tmp_path / "out", uri, target_lufs=-16.0)
    assert again["skipped"] == 1 and again["files"][0]["status"] == "skipped"
    assert again["files"][0]["lufs_after"] == first["files"][0]["lufs_after"]
    assert math.isclose(again["levels_mean"]["lufs_after"], first["levels_mean"]["lufs_after"])
