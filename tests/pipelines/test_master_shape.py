"""`automaster master`'s shape (issue 20): one file in and one file out; several inputs; a reference
per file; pictures only on request and one overview picture per job; labels that say what ran.
Real music, the shipped models, the real CLI (in-process: no Ray for one file)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from automaster.audio import read_audio
from automaster.cli import main
from automaster.dsp.loudness import integrated_loudness, true_peak_dbtp

REPO = Path(__file__).resolve().parents[2]
MUSIC = REPO / "tests" / "data" / "music"
BRAHMS = MUSIC / "d01_librosa_brahms_hungarian_dance_5.flac"
BRAHMS_MP3 = MUSIC / "d01_librosa_brahms_hungarian_dance_5.mp3"
FAIRY = MUSIC / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac"


def _master(*args: str, tmp_path: Path) -> int:
    return main(["master", *args, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])


@pytest.mark.parametrize("ext, fmt", [(".wav", "WAV"), (".flac", "FLAC"), (".ogg", "OGG")])
def test_one_file_in_one_file_out(tmp_path, capsys, ext, fmt):
    out = tmp_path / "deliver" / f"mastered{ext}"
    assert _master("--input", str(BRAHMS), "--out", str(out), "--preset", "streaming", tmp_path=tmp_path) == 0
    info, src = sf.info(str(out)), sf.info(str(BRAHMS))
    assert info.format == fmt and info.samplerate == src.samplerate and info.channels == src.channels
    assert info.frames == src.frames  # the input's length, sample for sample
    # exactly the file and its report beside it: no folders, no pictures, no MLflow store
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, out.name + ".report.json"]
    assert not (tmp_path / "mlflow.db").exists()
    report = json.loads((out.parent / (out.name + ".report.json")).read_text())
    assert report["input"]["blake2b"] and report["input"]["size"] == BRAHMS.stat().st_size
    audio, sr = read_audio(str(out))
    assert integrated_loudness(audio, sr) == pytest.approx(-14.0, abs=0.3) and true_peak_dbtp(audio, sr) <= -1.0 + 1e-2
    line = capsys.readouterr().out
    assert f"-> {out}" in line and "to -14.0 LUFS" in line and "restore" not in line and "level model" not in line


def test_one_file_rerun_is_up_to_date_and_other_settings_need_overwrite(tmp_path, capsys):
    out = tmp_path / "m.flac"
    assert _master("--input", str(FAIRY), "--out", str(out), tmp_path=tmp_path) == 0
    stamp = out.stat().st_mtime_ns
    assert _master("--input", str(FAIRY), "--out", str(out), tmp_path=tmp_path) == 0
    assert "up to date" in capsys.readouterr().out and out.stat().st_mtime_ns == stamp
    assert _master("--input", str(FAIRY), "--out", str(out), "--preset", "club", tmp_path=tmp_path) == 2
    assert "--overwrite" in capsys.readouterr().err and out.stat().st_mtime_ns == stamp
    assert _master("--input", str(BRAHMS), "--out", str(out), tmp_path=tmp_path) == 2  # another input, same name
    assert _master("--input", str(FAIRY), "--out", str(out), "--preset", "club", "--overwrite", tmp_path=tmp_path) == 0
    assert out.stat().st_mtime_ns != stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".automaster-tmp")]


@pytest.mark.parametrize("args, words", [
    (["--out", "{input}"], "is the input itself"),
    (["--out", "{tmp}/x.aiff"], "cannot write .aiff"),
    (["--out", "{tmp}/x.txt"], None),  # not an audio name: a folder called x.txt (accepted)
])
def test_one_file_bad_outputs_are_one_line(tmp_path, capsys, args, words):
    src = tmp_path / "in.flac"
    src.write_bytes(FAIRY.read_bytes())
    argv = [a.format(input=src, tmp=tmp_path) for a in args]
    code = _master("--input", str(src), *argv, "--no-ray", tmp_path=tmp_path)
    err = capsys.readouterr().err
    if words is None:
        assert code == 0 and (tmp_path / "x.txt" / "audio" / "in.flac").is_file()
        return
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert src.read_bytes() == FAIRY.read_bytes()  # the input untouched


def test_a_file_output_takes_one_input_file(tmp_path, capsys):
    assert _master("--input", str(MUSIC), "--out", str(tmp_path / "x.wav"), tmp_path=tmp_path) == 2
    assert "a file name takes exactly one input file" in capsys.readouterr().err
    assert _master("--input", str(BRAHMS), "--input", str(FAIRY), "--out", str(tmp_path / "x.wav"), tmp_path=tmp_path) == 2
    assert not (tmp_path / "x.wav").exists()


def test_one_file_given_twice_is_mastered_once_and_said_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(MUSIC)
    os.symlink(FAIRY, tmp_path / "link.flac")
    assert _master("--input", FAIRY.name, "--input", f"./{FAIRY.name}", "--input", str(tmp_path / "link.flac"),
                   "--out", str(tmp_path / "x.flac"), tmp_path=tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"master: --input ./{FAIRY.name}: the same file as {FAIRY.name}: mastered once",
                       f"master: --input {tmp_path / 'link.flac'}: the same file as {FAIRY.name}: mastered once"]
    assert sf.info(tmp_path / "x.flac").frames == sf.info(FAIRY).frames


def test_several_inputs_pictures_on_request_and_one_overview(tmp_path):
    sub = tmp_path / "album"
    sub.mkdir()
    (sub / "d01.flac").write_bytes(BRAHMS.read_bytes())
    out = tmp_path / "out"
    assert _master("--input", str(FAIRY), "--input", str(sub), "--input", str(BRAHMS_MP3), "--out", str(out),
                   "--no-ray", tmp_path=tmp_path) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 3
    outputs = sorted(f["output"] for f in summary["files"])
    assert outputs == ["audio/album/d01.flac", "audio/d01_librosa_brahms_hungarian_dance_5.flac",
                       "audio/d02_librosa_kevin_macleod_sugar_plum_fairy.flac"]
    for rel in outputs:
        assert (out / "report" / (rel[len("audio/"):] + ".json")).is_file()
    # no per-file picture by default; one overview for the job
    assert not any(p.suffix == ".png" for p in (out / "report").rglob("*"))
    assert not (out / "spectrograms").exists() and not (out / "debug").exists()
    assert (out / "overview.png").stat().st_size > 10_000
    # with --pictures (a new folder: pictures change what a folder holds)
    pics = tmp_path / "pics"
    assert _master("--input", str(FAIRY), "--out", str(pics), "--pictures", "--no-ray", tmp_path=tmp_path) == 0
    name = FAIRY.name
    for rel in (f"report/{name}.png", f"spectrograms/{name}.png"):
        assert (pics / rel).stat().st_size > 10_000, rel
    # the same folder without --pictures is another setting: refused in one line
    assert _master("--input", str(FAIRY), "--out", str(pics), "--no-ray", tmp_path=tmp_path) == 2


def test_a_reference_per_file_from_a_csv(tmp_path, capsys):
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"input,reference\n{FAIRY},{BRAHMS}\n{BRAHMS},{FAIRY}\n")
    out = tmp_path / "out"
    assert _master("--references", str(csv), "--out", str(out), "--no-ray", tmp_path=tmp_path) == 0
    for src, ref in ((FAIRY, BRAHMS), (BRAHMS, FAIRY)):
        report = json.loads((out / "report" / f"{src.name}.json").read_text())
        assert report["settings"]["reference"] == str(ref)
        audio, sr = read_audio(str(ref))
        assert report["lufs_out"] == pytest.approx(integrated_loudness(audio, sr), abs=0.5)  # the reference's level
        assert report["reference"]["tone_error_out_db"] < report["reference"]["tone_error_in_db"]
    bad = tmp_path / "bad.csv"
    bad.write_text("song,ref\na.wav,b.wav\n")
    capsys.readouterr()
    assert _master("--references", str(bad), "--out", str(tmp_path / "o2"), tmp_path=tmp_path) == 2
    assert "input,reference" in capsys.readouterr().err
    assert _master("--references", str(csv), "--input", str(FAIRY), "--out", str(tmp_path / "o3"), tmp_path=tmp_path) == 2


def test_labels_say_what_ran(tmp_path):
    """--amount 0: no restoration is claimed; a LUFS preset is not called 'restore'."""
    clean, sr = read_audio(str(FAIRY))
    delay = int(0.2 * sr)
    echoed = clean.copy()
    echoed[:, delay:] += 0.45 * clean[:, :-delay]  # a strong echo the echo stage removes at amount 1
    src = tmp_path / "echo.wav"
    sf.write(str(src), (echoed / (np.abs(echoed).max() * 1.05)).T, sr, subtype="FLOAT")
    for amount, removed in (("1", True), ("0", False)):
        out = tmp_path / f"a{amount}.flac"
        assert _master("--input", str(src), "--out", str(out), "--amount", amount, "--preset", "streaming",
                       tmp_path=tmp_path) == 0
        report = json.loads((tmp_path / f"a{amount}.flac.report.json").read_text())
        restore = report["stages"][0]
        assert restore["applied"] is removed and ("echo removed" in report["applied"]) is removed
        assert report["estimates"].get("echo_removed", False) is removed
        assert "restore" not in report["applied"] and report["applied"].count("to -14.0 LUFS") == 1
        assert report["loudness_from"] == "preset streaming" or report["loudness_from"].startswith("preset")


def test_the_worker_count_respects_memory():
    """Long files need more memory per worker: the default worker count is cut to what fits."""
    from automaster.pipelines.batch import JobSpec, _workers_for_memory
    from automaster.pipelines.master import worker_memory_bytes

    short, long = worker_memory_bytes([{"duration_s": 30.0}]), worker_memory_bytes([{"duration_s": 3600.0}])
    assert short < 1.0 * 2**30 < long
    # mastered a block at a time, an hour counts as STREAM_ABOVE_S; a file with its own reference is read whole
    streamed = worker_memory_bytes([{"duration_s": 3600.0}], stream_above_s=300.0)
    assert streamed == worker_memory_bytes([{"duration_s": 300.0}]) < 1.0 * 2**30
    assert worker_memory_bytes([{"duration_s": 3600.0, "reference": "r.wav"}], stream_above_s=300.0) == long
    spec = JobSpec("master", "out", {}, object, {}, worker_memory_bytes=long)
    gib = 2**30
    assert _workers_for_memory(spec, cpus=16, memory_bytes=64 * gib) == int(64 * gib // long) < 16
    assert _workers_for_memory(spec, cpus=2, memory_bytes=64 * gib) == 2  # CPUs bound it first
    assert _workers_for_memory(spec, cpus=16, memory_bytes=1 * gib) == 1  # never none
    spec.worker_memory_bytes = None
    assert _workers_for_memory(spec, cpus=16, memory_bytes=1 * gib) == 16


def test_one_file_into_a_folder_that_takes_no_file_is_one_line(tmp_path, capsys):
    assert _master("--input", str(FAIRY), "--out", "/proc/automaster-test.wav", tmp_path=tmp_path) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and len(err.strip().splitlines()) == 1


def test_a_killed_one_file_runs_staging_is_removed_by_the_next_run(tmp_path):
    """A run killed midway leaves its hidden staging folder (a long file's scratch audio in it);
    the next run into that folder removes it, but never a running run's or anything else."""
    import os
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    prefix = f".automaster-tmp-one-{socket.gethostname()}-"
    killed = tmp_path / f"{prefix}{dead.stdout.strip()}-abc"
    running = tmp_path / f"{prefix}{os.getpid()}-def"
    other = tmp_path / ".automaster-tmp-someone-elses"
    for folder in (killed, running, other):
        folder.mkdir()
        (folder / "input.f32").write_bytes(b"\0" * 1024)
    assert _master("--input", str(FAIRY), "--out", str(tmp_path / "m.flac"), "--preset", "streaming", tmp_path=tmp_path) == 0
    assert not killed.exists() and running.is_dir() and other.is_dir()
