"""Issue 22 tried as a new user would, through ``automaster master`` on real music: an input
edited in place, ``--out`` equal to ``--input`` with the user's temporaries, unusable paths, a
full disk, a corrupt MLflow store; and Ray against in-process outputs, byte for byte."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from automaster.cli import main
from automaster.pipelines.master import run_master
from tests.pipelines.test_guarantees import _mount_tmpfs, read_only_folder
from tests.pipelines.test_reliability import ckpt, good  # noqa: F401  (fixtures: a tiny model, real music)


def _master(ckpt, folder, out, uri, *extra):
    return main(["master", "--model", ckpt, "--input", str(folder), "--out", str(out), "--tracking-uri", uri,
                 "--no-ray", *extra])


def test_an_edited_input_is_redone_not_reported_as_current(ckpt, good, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    assert _master(ckpt, folder, tmp_path / "out", uri) == 0
    assert sf.info(tmp_path / "out/audio/a.wav").samplerate == 44100
    shutil.copy(good["wav24_48k"], folder / "a.wav")  # another song under the same name
    capsys.readouterr()
    assert _master(ckpt, folder, tmp_path / "out", uri) == 0
    printed = capsys.readouterr().out
    assert "redone: 1 changed inputs" in printed and "0 skipped" in printed
    assert sf.info(tmp_path / "out/audio/a.wav").samplerate == 48000  # the master of the new input


def test_out_equal_to_input_keeps_the_users_temporaries(ckpt, good, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "music"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(good["wav16"], folder / "a.wav")
    (folder / ".draft.tmp").write_text("draft")
    (folder / "sub/.session.tmp").write_text("session")
    assert _master(ckpt, folder, folder, uri) == 0
    assert _master(ckpt, folder, folder, uri) == 0  # the start-up sweep of a second run
    assert (folder / ".draft.tmp").read_text() == "draft" and (folder / "sub/.session.tmp").read_text() == "session"


def test_unusable_paths_exit_2_in_one_line_before_anything_starts(ckpt, good, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    with read_only_folder(tmp_path / "ro") as ro:
        cases = [((folder, ro), "cannot be written into"), ((folder, tmp_path / "loop_a"), "symbolic link loop"),
                 ((tmp_path / "loop_a", tmp_path / "out"), "symbolic link loop")]
        for (inp, out), named in cases:
            code = _master(ckpt, inp, out, uri)
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1 and named in err[0], (inp, out, err)
    assert not (tmp_path / "mlflow.db").exists()


def test_workers_beyond_the_bound_exit_2(ckpt, good, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    code = _master(ckpt, folder, tmp_path / "out", f"sqlite:///{tmp_path / 'm.db'}", "--workers", "100000")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--workers 100000: at most" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_named_once_and_exits_non_zero(ckpt, good, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        shutil.copy(good["wav_float"], folder / f"s{i}.wav")  # 1.5 s each: about 0.5 MB of WAV out
    with _mount_tmpfs(tmp_path / "small", "size=1200k") as small:
        code = _master(ckpt, folder, small / "out", uri)
        captured = capsys.readouterr()
        err = [ln for ln in captured.err.strip().splitlines() if "item/s" not in ln]  # the progress bar's
        assert code == 1 and len(err) == 1 and "no space left on device" in err[0], err
        assert "Traceback" not in captured.err + captured.out and "System error" not in captured.err
        out = small / "out"
        done = {p.name for p in (out / "audio").glob("*.wav")} if (out / "audio").exists() else set()
        assert len(done) < 6
        for name in done:  # whatever is there is whole
            assert sf.info(out / "audio" / name).frames == sf.info(folder / name).frames
        assert len(list((out / ".automaster/items").glob("*.json"))) == len(done)
        assert not [p for p in out.rglob("*") if p.name.startswith(".automaster-tmp-")]


def test_a_corrupt_store_masters_anyway_and_says_so(ckpt, good, tmp_path, capsys):
    (tmp_path / "mlflow.db").write_bytes(b"not a database " * 200)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    code = _master(ckpt, folder, tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}")
    captured = capsys.readouterr()
    assert code == 0 and (tmp_path / "out/audio/a.wav").exists()
    assert "not recorded in MLflow: file is not a database" in captured.out
    assert captured.err.strip() == "" or "Traceback" not in captured.err


@pytest.mark.slow
def test_ray_and_in_process_outputs_are_byte_identical(ray_local, ckpt, good, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good["wav16"], folder / "a.wav")
    shutil.copy(good["flac"], folder / "b.flac")
    local = run_master(ckpt, str(folder), str(tmp_path / "local"), tracking_uri=uri, progress=False, ray=False)
    remote = run_master(ckpt, str(folder), str(tmp_path / "ray"), tracking_uri=uri, progress=False, ray=True, workers=2)
    assert (local["mode"], remote["mode"], local["ok"], remote["ok"]) == ("in-process", "ray", 2, 2)
    files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*")
                   if p.is_file() and p.parts[len((tmp_path / "local").parts)] not in (".automaster", "logs")
                   and p.name != "summary.json")
    assert any(str(f).startswith("audio/") for f in files) and any(str(f).startswith("report/") for f in files)
    differ = [str(f) for f in files if (tmp_path / "local" / f).read_bytes() != (tmp_path / "ray" / f).read_bytes()]
    assert differ == []  # reports included (width_out_db differed in its last digits: BLAS threads)


def test_an_input_above_full_scale_gets_a_repair_note(ckpt, good, tmp_path):
    data, sr = sf.read(good["wav_float"], dtype="float32")
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "hot.wav", data * (4.0 / max(1e-9, float(abs(data).max()))), sr, subtype="FLOAT")  # +12 dBFS
    summary = run_master(ckpt, str(folder), str(tmp_path / "out"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                         progress=False, ray=False)
    notes = summary["notes"]["hot.wav"]
    assert any("peaks at +12.0 dBFS, above full scale" in n and "nothing was clipped" in n for n in notes), notes
