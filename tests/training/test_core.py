"""The Ray-free core: trains with ray and mlflow blocked from import, resumes, and its checkpoint masters a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from automaster.audio import read_audio
from automaster.model.checkpoint import load_model

REPO = Path(__file__).resolve().parents[2]
FMA = REPO / "tests" / "data" / "fma"
FAST = ["--set", "train.batch_size=2", "--set", "train.val_crops=2", "--set", "train.val_crop_seconds=2",
        "--set", "train.val_every=2", "--threads", "1"]  # fmt: skip
SPECTRAL = ["--set", "model.mode=spectral", "--set", "model.spectral_width=4", "--set", "model.spectral_depth=2",
            "--set", "model.spectral_stem_stride=8", "--set", "train.crop_seconds=1"]  # fmt: skip
CASCADE = ["--set", "model.mode=cascade", "--set", "model.unet_depth=2", "--set", "model.unet_width=4",
           "--set", "model.lstm_hidden=8", "--set", "model.lstm_layers=1", "--set", "train.crop_frames=64"]  # fmt: skip

# Runs the CLI with ray and mlflow unimportable (as on a GPU machine that has neither).
BLOCKED = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from automaster.training.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in ("ray", "mlflow")]
sys.exit(code)
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", BLOCKED, *args], env=env, capture_output=True, text=True, timeout=600)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_spectral_training_without_ray_or_mlflow_resumes_and_restores_a_file(tmp_path):
    out = tmp_path / "out"
    done = _run("--audio", str(FMA), "--out", str(out), "--steps", "2", *FAST, *SPECTRAL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [m["step"] for m in _lines(out / "metrics.jsonl")] == [2]
    again = _run("--audio", str(FMA), "--out", str(out), "--steps", "4", *FAST, *SPECTRAL)
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = _lines(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [2, 4]  # resumed at step 2, not started again
    assert {"val/mrstft", "val/mrstft_identity", "val/mrstft_oracle_gain", "val/level_error_db"} <= set(metrics[-1])
    model, config, meta = load_model(out / "checkpoints" / "last")
    assert config.model.mode == "spectral" and meta["has_training_state"] and meta["extra"]["step"] == 4
    audio, sr = read_audio(REPO / "tests" / "data" / "music" / "d01_librosa_brahms_hungarian_dance_5.mp3",
                           sample_rate=44100, duration_s=3.3)  # fmt: skip
    with torch.no_grad():
        restored = model(torch.from_numpy(audio)[None])["wave"][0].numpy()
    assert restored.shape == audio.shape and np.isfinite(restored).all()
    from automaster.cli import default_inversion
    from automaster.mastering import Masterer, MasteringError

    masterer = Masterer(out / "model", inversion=default_inversion(str(out / "model")), chunk_s=1.2, context_s=0.3)
    assert masterer.supported_inversions() == ["mask"]
    native, sr = read_audio(REPO / "tests" / "data" / "music" / "d01_librosa_brahms_hungarian_dance_5.mp3",
                            sample_rate=22050, duration_s=3.3)  # fmt: skip
    mastered, info = masterer.master_audio(native, sr)  # several chunks, at a rate not the model's
    assert mastered.shape == native.shape and np.isfinite(mastered).all()
    assert abs(info["predicted_lufs"] - info["lufs_before"] - info["level_gain_db"]) < 1e-9
    with pytest.raises(MasteringError, match="'mask' inversion only"):
        masterer.check_inversion("chain")


def test_max_minutes_stops_at_a_validated_checkpoint_that_a_later_run_resumes(tmp_path):
    out = tmp_path / "out"
    # a limit of ~0 s: the first step reaches it; the run validates and checkpoints there
    done = _run("--audio", str(FMA), "--out", str(out), "--steps", "50", *FAST, *SPECTRAL,
                "--set", "train.max_minutes=0.00001", "--set", "train.damage_effects=reverb,compressor")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train.max_minutes (1e-05) reached" in done.stderr
    assert [m["step"] for m in _lines(out / "metrics.jsonl")] == [1]
    assert json.loads((out / "summary.json").read_text())["stopped"] == "max_minutes"
    again = _run("--audio", str(FMA), "--out", str(out), "--steps", "2", *FAST, *SPECTRAL,
                 "--set", "train.damage_effects=compressor, reverb")  # the same effects  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert [m["step"] for m in _lines(out / "metrics.jsonl")] == [1, 2]
    assert json.loads((out / "summary.json").read_text())["stopped"] == "steps"


def test_ctrl_c_exits_130_in_one_line_and_the_same_command_resumes(tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    args = ["--audio", str(FMA), "--out", str(out), "--steps", "10000", *FAST, *SPECTRAL]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED, *args], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"interrupted: {out / 'checkpoints' / 'last'}")
    done = int(load_model(out / "checkpoints" / "last")[2]["extra"]["step"])  # the last validated step
    again = _run("--audio", str(FMA), "--out", str(out), "--steps", str(done + 2), *FAST, *SPECTRAL)
    assert again.returncode == 0 and f"resuming from {out / 'checkpoints' / 'last'} at step {done}" in again.stderr, again.stderr[-3000:]


@pytest.mark.parametrize(
    "change, message",
    [
        (["--set", "train.damage_effects=all"], "train.damage_effects = 'reverb,compressor' in the checkpoint, 'all' now"),
        (["--set", "train.damage_effects=reverb,compressor", "--set", "model.spectral_width=8"],
         "model.spectral_width = 4 in the checkpoint, 8 now"),  # fmt: skip
    ],
)
def test_resuming_with_another_model_or_damage_exits_2_before_reading_audio(tmp_path, capsys, change, message):
    """A checkpoint of another model would not load; one validated on other damage would make the
    best score so far incomparable: either is refused in one line, the run left as it was."""
    from automaster.training.cli import main

    out = tmp_path / "out"
    done = _run("--audio", str(FMA), "--out", str(out), "--steps", "1", *FAST, *SPECTRAL,
                "--set", "train.damage_effects=reverb,compressor")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    before = (out / "checkpoints" / "last" / "model.pt").read_bytes()
    assert main(["--audio", str(FMA), "--out", str(out), "--steps", "2", *FAST, *SPECTRAL, *change]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: holds a run to resume with other settings ({message})" in err and len(err.strip().splitlines()) == 1
    assert (out / "checkpoints" / "last" / "model.pt").read_bytes() == before


def test_the_thesis_cascade_trains_through_the_same_core_and_masters_a_file(tmp_path):
    from automaster.mastering import Masterer

    out = tmp_path / "out"
    done = _run("--audio", str(FMA), "--out", str(out), "--steps", "2", *FAST, *CASCADE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"val/mel_l1_db", "val/mae_ratio"} <= set(_lines(out / "metrics.jsonl")[-1])
    audio, sr = read_audio(REPO / "tests" / "data" / "music" / "d01_librosa_brahms_hungarian_dance_5.mp3", duration_s=4.0)
    mastered, info = Masterer(out / "model", inversion="mask").master_audio(audio, sr)
    assert mastered.shape == audio.shape and np.isfinite(mastered).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--audio", "/no/such/folder"], "--audio: '/no/such/folder' is not a folder"),
        (["--audio", str(FMA), "--steps", "0"], "--steps must be >= 1"),
        (["--audio", str(FMA), "--set", "train.nosuch=1"], "unknown key"),
        (["--audio", str(FMA), "--set", "train.source=pairs"], "--audio: train.source='pairs' needs --data"),
        (["--audio", str(FMA), "--set", "train.max_minutes=-1"], "train.max_minutes must be >= 0"),
        (["--audio", str(FMA), "--set", "train.damage_effects=chorus"], "train.damage_effects: expected"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, args, message):
    from automaster.training.cli import main

    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
