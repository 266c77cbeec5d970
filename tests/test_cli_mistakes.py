"""A user's mistake on the command line, as the real ``automaster`` process meets it: exit 2, one
line on stderr that names the flag, no traceback, nothing written and no cluster started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO

CLI = [sys.executable, "-m", "automaster.cli"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
SONG = REPO / "tests" / "data" / "music" / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac"


def _mistake(tmp_path, *args: str) -> str:
    """Run ``automaster args`` in an empty ``tmp_path/cwd``; assert the one-line usage error and
    that nothing was written there; return the line."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (args, proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and proc.stdout == "", (args, proc.stdout)
    assert not list(cwd.iterdir()), (args, list(cwd.iterdir()))  # no output, no mlflow.db, no logs
    return lines[0]


@pytest.mark.parametrize("args, named", [
    (["master", "--input", str(SONG)], "--out"),                                  # a required flag left out
    (["master", "--input", str(SONG), "--out", "x.wav", "--preset", "loud"], "--preset"),  # not a choice
    (["demaster", "--corpus", str(SONG.parent), "--out", "o", "--seed", "x"], "--seed"),    # not a number
    (["train", "--data", "d", "--out", "o", "--mode", "bogus"], "--mode"),
    (["bogus"], "bogus"),
    (["master", "--input", str(SONG), "--out", "x.wav", "--set", "a.b=1"], "automaster master: error: unrecognized arguments: --set"),
])
def test_an_argument_the_parser_refuses_is_one_line(tmp_path, args, named):
    """(before: argparse's whole usage block, 8 to 15 lines, above the error)."""
    line = _mistake(tmp_path, *args)
    assert named in line and line.startswith("automaster") and "--help" in line, line


@pytest.mark.parametrize("args, flag", [
    (["master", "--input", str(SONG), "--out", ""], "--out"),
    (["master", "--input", "", "--out", "o"], "--input"),
    (["demaster", "--corpus", "", "--out", "o"], "--corpus"),
    (["demaster", "--corpus", str(SONG.parent), "--out", " "], "--out"),
])
def test_an_empty_path_is_refused_not_taken_for_the_working_directory(tmp_path, args, flag):
    """(before: ``--out ''`` mastered into the working directory and ``--corpus ''`` demastered it, exit 0)."""
    line = _mistake(tmp_path, *args)
    assert f"{flag} is empty" in line, line


def test_an_output_name_longer_than_the_file_system_takes_is_refused(tmp_path):
    """One file: the output's name (or its report's, ``<name>.report.json``) over 255 bytes
    (before: exit 1 after the mastering, 'File name too long')."""
    line = _mistake(tmp_path, "master", "--input", str(SONG), "--out", str(tmp_path / ("L" * 250 + ".flac")))
    assert "--out" in line and "255" in line, line


@pytest.mark.parametrize("command", ["train", "tune"])
def test_data_that_is_not_a_demaster_output_is_a_usage_error(tmp_path, command):
    """(before: train printed a traceback and exited 1; tune announced itself and made --out/logs first)."""
    line = _mistake(tmp_path, command, "--data", str(SONG.parent), "--out", str(tmp_path / "cwd" / "o"))
    assert "--data" in line and "not a demaster output" in line, line


def test_compare_with_a_tracking_uri_mlflow_cannot_use_is_one_line(tmp_path):
    """(before: a 41-line traceback, exit 1)."""
    line = _mistake(tmp_path, "compare", "--tracking-uri", "bogus://x")
    assert "--tracking-uri" in line and "bogus://x" in line, line


def test_compare_into_a_csv_that_cannot_be_written_is_one_line(tmp_path):
    """(before: a traceback from the CSV write after reading every run, exit 1)."""
    line = _mistake(tmp_path, "compare", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "--csv", "/proc/automaster-test/runs.csv")
    assert "--csv" in line, line


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_tracking_server_that_does_not_answer_is_a_usage_error(tmp_path, command):
    """Training records into MLflow: a server that refuses is one line before Ray starts (before:
    MLflow retried for 4 minutes after Ray and the data were up, then a traceback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    line = _mistake(tmp_path, command, "--data", str(SONG.parent), "--out", "o", "--tracking-uri", uri)
    assert "--tracking-uri" in line and uri in line, line


@pytest.mark.parametrize("rate, channels", [(96000, 2), (44100, 6)])
def test_an_output_format_that_cannot_hold_the_input_is_refused_before_any_work(tmp_path, rate, channels):
    """The output keeps the input's rate and channels; MP3 holds at most 48 kHz and stereo
    (before: libsndfile's traceback after the mastering, exit 1)."""
    import numpy as np
    import soundfile as sf

    song = tmp_path / f"in_{rate}_{channels}.wav"
    sf.write(song, np.zeros((rate // 10, channels), np.float32), rate)
    line = _mistake(tmp_path, "master", "--input", str(song), "--out", str(tmp_path / "out.mp3"))
    assert "--out" in line and "MP3" in line and ".flac" in line, line
    assert not (tmp_path / "out.mp3").exists()


def test_a_reference_too_short_to_measure_is_refused(tmp_path):
    """(before: a 1-sample reference was 'measured' at -14 LUFS and the song turned down 10.5 dB to it)."""
    import numpy as np
    import soundfile as sf

    ref = tmp_path / "one_sample.wav"
    sf.write(ref, np.full((1, 2), 0.1, np.float32), 44100)
    line = _mistake(tmp_path, "master", "--input", str(SONG), "--out", str(tmp_path / "o.wav"), "--reference", str(ref))
    assert "--reference" in line and "0.00 s" in line, line


def test_an_input_that_is_a_pipe_or_a_device_is_refused(tmp_path):
    """(before: reading the named pipe, or /dev/zero behind a .wav link, waited forever)."""
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "zero.wav").symlink_to("/dev/zero")
    for name in ("pipe.wav", "zero.wav"):
        line = _mistake(tmp_path, "master", "--input", str(tmp_path / name), "--out", str(tmp_path / "o.wav"))
        assert "--input" in line and "pipe, a device" in line, line


@pytest.mark.parametrize("args, line", [
    (["demaster", "--variants", "0"], "automaster demaster: error: --variants 0: must be >= 1"),  # not demaster.variants
    (["demaster", "--clip-seconds", "nan"], "automaster demaster: error: --clip-seconds: expected a number, got nan"),
    (["demaster", "--set", "nope.x=1"], "automaster demaster: error: unknown section(s): nope (known: "),  # not "in []"
])
def test_a_settings_mistake_names_the_flag_the_user_typed(tmp_path, args, line):
    command, *rest = args
    assert _mistake(tmp_path, command, "--corpus", str(SONG.parent), "--out", "o", *rest).startswith(line)
