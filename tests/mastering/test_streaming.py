"""Long files a block at a time (automaster.mastering.streaming): the same output and report as
the whole-file path, each streamed piece equal to its whole-signal twin, and a peak memory that
does not grow with the file's length."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from automaster.audio import read_audio
from automaster.config import MasterConfig
from automaster.dsp.cepstrum import detect_echo, detect_echo_in
from automaster.dsp.loudness import integrated_loudness, true_peak_dbtp
from automaster.effects.echo import EchoInverseStream, echo_inverse_time
from automaster.mastering import MIN_ECHO_GAIN, streaming
from automaster.mastering.policy import remove_echo
from automaster.mastering.streaming import Meter, RawAudio, plan
from automaster.pipelines.master import MasterProcessor

REPO = Path(__file__).resolve().parents[2]
MUSIC = REPO / "tests" / "data" / "music"
SR = 44100


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    x, sr = read_audio(MUSIC / "d01_librosa_brahms_hungarian_dance_5.flac")
    assert sr == SR
    return x


@pytest.fixture(scope="module")
def echoed(music, tmp_path_factory) -> Path:
    """The music with a 210 ms echo at 0.45, 50 s long: two blocks and a bit."""
    x = np.tile(music, (1, -(-50 * SR // music.shape[1])))[:, : 50 * SR]
    d = int(0.21 * SR)
    y = x.copy()
    y[:, d:] += 0.45 * x[:, :-d]
    path = tmp_path_factory.mktemp("echo") / "echoed.wav"
    sf.write(path, (0.5 * y).T, SR, subtype="FLOAT")
    return path


class _Staging:
    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, rel: str) -> str:
        return str(self.folder / rel.replace("/", "_"))


def _master(path: Path, folder: Path, stream_above_s: float, **config) -> tuple[dict, np.ndarray, dict]:
    folder.mkdir()
    processor = MasterProcessor(str(REPO / "models" / "reference"), MasterConfig(**config), stream_above_s=stream_above_s)
    result = processor.process({"path": str(path), "out_rel": "out.flac", "layout": "file"}, _Staging(folder))
    audio, _ = read_audio(folder / result["output"].replace("/", "_"))
    report = json.loads((folder / (result["output"].replace("/", "_") + ".report.json")).read_text()) \
        if (folder / (result["output"].replace("/", "_") + ".report.json")).exists() else {}
    return result, audio, report


@pytest.mark.parametrize("preset", ["restore", "streaming", "club"])
def test_a_streamed_file_is_the_whole_file_path_output(echoed, tmp_path, preset):
    config = {"preset": preset, "level_model": str(REPO / "models" / "level")}
    whole, a, _ = _master(echoed, tmp_path / "whole", 1e9, **config)
    streamed, b, _ = _master(echoed, tmp_path / "streamed", 1.0, **config)
    assert a.shape == b.shape
    assert np.abs(a - b).max() < 1e-5  # 24-bit output: the same samples to a few LSB at most
    assert streamed["echo_removed"] and whole["echo_removed"]
    assert streamed["applied"] == whole["applied"]
    for key in ("lufs_after", "true_peak_after_dbtp", "lufs_before", "loudness_gain_db", "limiter_max_reduction_db"):
        assert streamed[key] == pytest.approx(whole[key], abs=1e-3), key
    if preset == "club":  # the soft clipper's passes, a block at a time
        assert "soft clip" in streamed["applied"] or "limiter" in streamed["applied"]
    assert true_peak_dbtp(b, SR) <= (-1.0 if preset == "streaming" else -2.0 if preset == "club" else 0.0) + 1e-3


def test_the_report_of_a_streamed_file_has_the_whole_files_stages(echoed, tmp_path):
    _, _, whole = _master(echoed, tmp_path / "whole", 1e9, preset="streaming")
    _, _, streamed = _master(echoed, tmp_path / "streamed", 1.0, preset="streaming")
    assert streamed["streamed"] is True
    assert [s["stage"] for s in streamed["stages"]] == [s["stage"] for s in whole["stages"]]
    assert [s["applied"] for s in streamed["stages"]] == [s["applied"] for s in whole["stages"]]
    assert streamed["width_in_db"] == pytest.approx(whole["width_in_db"], abs=1e-6)
    assert streamed["width_out_db"] == pytest.approx(whole["width_out_db"], abs=1e-3)
    assert streamed["duration_s"] == whole["duration_s"]


def test_no_scratch_is_left_beside_the_output(echoed, tmp_path):
    _master(echoed, tmp_path / "out", 1.0, preset="streaming")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["out.flac", "out.flac.report.json"]


def test_a_file_streams_only_when_long_and_nothing_needs_it_whole():
    class M:
        reference = None

        @staticmethod
        def restores():
            return False

    assert streaming.streams(M, 301.0, None, False)
    assert not streaming.streams(M, 299.0, None, False)
    assert not streaming.streams(M, 301.0, "a reference", False)
    assert not streaming.streams(M, 301.0, None, True)  # pictures read the whole track
    M.restores = staticmethod(lambda: True)
    assert not streaming.streams(M, 301.0, None, False)


def test_the_meter_of_blocks_is_the_whole_signals(music, tmp_path):
    x = np.tile(music, (1, 6))[:, : 47 * SR + 123]  # blocks of 20 s and a ragged end
    raw = RawAudio(str(tmp_path / "x.f32"), 2)
    raw.append(x)
    m = Meter(x.shape[1], SR, 2)
    for b0, b1, e0, e1 in plan(x.shape[1], SR):
        m.feed(raw.read(e0, e1), b0, b1, e0)
    assert m.lufs() == pytest.approx(integrated_loudness(x, SR), abs=1e-9)
    assert 20 * np.log10(m.true_peak) == pytest.approx(true_peak_dbtp(x, SR), abs=1e-6)
    assert m.peak == pytest.approx(float(np.abs(x).max()))
    raw.close()
    assert not (tmp_path / "x.f32").exists()


def test_the_echo_inverse_carries_its_recursion_across_blocks(music):
    y = music[:, : 10 * SR]
    whole = echo_inverse_time(y, SR, 0.2104, 0.4)
    inverse = EchoInverseStream(2, SR, 0.2104, 0.4)
    blocks = [inverse(y[:, a : a + 7777]) for a in range(0, y.shape[1], 7777)]  # blocks shorter than the delay
    assert np.abs(np.concatenate(blocks, axis=1) - whole).max() < 1e-6


def test_the_feedback_echo_inverse_carries_its_comb_and_recursion_across_blocks(music):
    y = music[:, : 10 * SR]
    whole = echo_inverse_time(y, SR, 0.2104, 0.1, feedback=0.35)
    inverse = EchoInverseStream(2, SR, 0.2104, 0.1, feedback=0.35)
    blocks = [inverse(y[:, a : a + 7777]) for a in range(0, y.shape[1], 7777)]  # blocks shorter than the delay
    assert np.abs(whole - echo_inverse_time(y, SR, 0.2104, 0.1)).max() > 0.01  # the feedback term acts
    assert np.abs(np.concatenate(blocks, axis=1) - whole).max() < 1e-5


def test_echo_detection_read_by_segment_is_the_whole_arrays(echoed, tmp_path):
    x, _ = read_audio(echoed)
    raw = RawAudio(str(tmp_path / "e.f32"), 2)
    raw.append(x)
    lazy = detect_echo_in(streaming._Mono(raw), SR, min_gain=0.1, min_delay_s=0.05, max_delay_s=0.52)
    whole = detect_echo(x, SR, min_gain=0.1, min_delay_s=0.05, max_delay_s=0.52)
    assert lazy.confirmed and whole.confirmed
    assert lazy.delay_s == pytest.approx(whole.delay_s, abs=1e-6) and lazy.delay_s == pytest.approx(0.21, abs=1e-3)
    assert lazy.gain == pytest.approx(whole.gain, abs=1e-5)


def test_the_streamed_echo_stage_undoes_the_same_taps_as_the_whole(music, tmp_path):
    """A three-tap echo on 50 s (blocks and detection segments at their seams): the same taps,
    the same audio as :func:`remove_echo` on the whole array, and no scratch file left behind."""
    x = np.tile(music, (1, -(-50 * SR // music.shape[1])))[:, : 50 * SR]
    y = x.copy()
    for delay_s, gain in ((0.09, 0.35), (0.2, 0.3), (0.33, 0.25)):
        d = round(delay_s * SR)
        y[:, d:] += gain * x[:, :-d]
    y *= np.float32(0.4)
    whole, note = remove_echo(y, SR, MIN_ECHO_GAIN)
    raw = RawAudio(str(tmp_path / "input.f32"), 2)
    raw.append(y)
    streamed, streamed_note = streaming.echo_stage(raw, SR, MIN_ECHO_GAIN, str(tmp_path))
    assert len(note["echo_taps"]) == 3
    assert [t["delay_s"] for t in streamed_note["echo_taps"]] == pytest.approx([t["delay_s"] for t in note["echo_taps"]], abs=1e-6)
    assert np.abs(streamed.read(0, streamed.frames) - whole).max() < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.f32", "restored-4.f32"]  # three taps, then all three at once


_PEAK_RSS = """
import resource, sys
from automaster.cli import main
code = main(["master", "--input", sys.argv[1], "--out", sys.argv[2], "--preset", "streaming"])
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_files_length(tmp_path):
    """Five and a half and nine minutes of synthetic stereo (both streamed): the longer file's
    peak is within 40 MB of the shorter's, where holding them whole would add about 135 MB."""
    rng = np.random.default_rng(0)
    peaks = {}
    for minutes in (5.5, 9):
        path = tmp_path / f"long{minutes:g}.flac"
        with sf.SoundFile(path, "w", SR, 2, subtype="PCM_16") as f:
            for _ in range(int(minutes * 6)):  # 10 s at a time: noise under a decaying tone, one "beat" a second
                t = np.arange(10 * SR) / SR
                tone = 0.3 * np.sin(2 * np.pi * 110 * t) * np.exp(-3 * (t % 1.0))
                f.write(np.stack([tone + 0.05 * rng.standard_normal(t.size), tone - 0.05 * rng.standard_normal(t.size)], 1))
        out = tmp_path / f"out{minutes:g}.flac"
        run = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path), str(out)], capture_output=True, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
        code, rss_kb = run.stdout.split()[-2:]
        assert code == "0", run.stderr[-2000:]
        assert json.loads(Path(f"{out}.report.json").read_text())["streamed"] is True
        assert sf.info(out).frames == int(minutes * 60) * SR
        peaks[minutes] = int(rss_kb) / 1024
        path.unlink()
    assert peaks[9] - peaks[5.5] < 40, peaks
