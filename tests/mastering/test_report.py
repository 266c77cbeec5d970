"""The per-file mastering report (JSON + PNG)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from automaster.mastering import report as R
from automaster.audio import read_audio
from automaster.dsp.loudness import integrated_loudness, short_term_loudness, true_peak_curve_dbtp, true_peak_dbtp
from automaster.dsp.tone import tone_profile
from automaster.mastering.finishing import FinishSettings, finish
from tests.conftest import DATA

MUSIC = DATA / "music"


@pytest.fixture(scope="module")
def mastered():
    audio, sr = read_audio(str(MUSIC / "d01_librosa_brahms_hungarian_dance_5.flac"))
    ref_audio, ref_sr = read_audio(str(MUSIC / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac"))
    ref = tone_profile(ref_audio, ref_sr)
    out, fin = finish(audio, audio, sr, FinishSettings(preset="streaming", reference=ref, amount=0.8))
    estimates = {"echo_delay_s": 0.12, "echo_gain": 0.04, "reverb_rt60_s": 0.9, "reverb_wet": 0.1}
    return R.build_report("d01.flac", audio, out, sr, fin, estimates, ref, {"preset": "streaming"}), audio, out, sr


def test_report_files_hold_the_figures(mastered):
    report, _, _, _ = mastered
    files = R.report_files("a/d01.flac", report)
    assert set(files) == {"report/a/d01.flac.json", "report/a/d01.flac.png"}
    data = json.loads(files["report/a/d01.flac.json"])
    for key in ("spectrum", "short_term_lufs", "true_peak_curve_dbtp", "gain_reduction_curve_db", "estimates", "stages", "reference"):
        assert key in data, key
    assert set(data["spectrum"]) == {"grid_hz", "input_db", "output_db", "reference_db"}
    assert [s["stage"] for s in data["stages"]] == ["restore", "reference", "amount", "loudness", "limiter", "ceiling"]
    assert data["reference"]["tone_error_out_db"] < data["reference"]["tone_error_in_db"]
    assert data["lufs_out"] == pytest.approx(-14.0, abs=0.3) and data["true_peak_out_dbtp"] <= -1.0
    image = Image.open(io.BytesIO(files["report/a/d01.flac.png"]))
    assert image.format == "PNG" and image.size[0] > 1000 and image.size[1] > 600


def test_the_figure_has_a_column_more_with_a_reference_and_draws_input_and_output(mastered):
    from automaster.mastering.report_figure import BLUE, HEADER_H, ORANGE, PANEL_H, PANEL_W, RED

    report = mastered[0]
    plain = {k: v for k, v in report.items() if k not in ("tone", "reference")}
    plain["spectrum"] = {k: v for k, v in report["spectrum"].items() if k != "reference_db"}
    for r, columns in ((report, 4), (plain, 3)):
        image = Image.open(io.BytesIO(R.report_png(r)))
        assert image.size == (columns * PANEL_W, HEADER_H + 2 * PANEL_H)
        rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
        for colour in (BLUE, ORANGE, RED):  # input, output, the ceiling and the limiter
            assert (rgb == colour).all(axis=1).sum() > 200, colour


@pytest.mark.parametrize("lo, hi", [(-15.8, -14.8), (-1.25, -0.15), (0.0, 29.95), (-160.0, -40.0), (-0.004, 0.003), (0.0, 600.0)])
def test_ticks_are_round_values_inside_the_axis(lo, hi):
    from automaster.mastering.report_figure import nice_ticks

    ticks, decimals = nice_ticks(lo, hi)
    assert 3 <= ticks.size <= 8 and ticks[0] >= lo - 1e-9 and ticks[-1] <= hi + 1e-9
    labels = [f"{t:.{decimals}f}" for t in ticks]
    assert len(set(labels)) == ticks.size  # enough digits to tell them apart
    np.testing.assert_allclose([float(v) for v in labels], ticks, atol=1e-12)  # and none rounded away
    step = np.diff(ticks)[0] / 10.0 ** np.floor(np.log10(np.diff(ticks)[0]))
    assert min(abs(step - m) for m in (1, 2, 2.5, 5)) < 1e-9


def test_short_term_loudness_of_a_steady_tone_is_its_integrated_loudness():
    sr = 48000
    t = np.arange(10 * sr) / sr
    tone = (0.1 * np.sin(2 * np.pi * 997 * t)).astype(np.float32)[None]
    times, lufs = short_term_loudness(tone, sr)
    assert times[0] == pytest.approx(1.5) and np.diff(times)[0] == pytest.approx(0.1)
    np.testing.assert_allclose(lufs, integrated_loudness(tone, sr), atol=0.05)


def test_peak_curve_reaches_the_true_peak(mastered):
    _, _, out, sr = mastered
    times, peaks = true_peak_curve_dbtp(out, sr)
    assert peaks.max() == pytest.approx(true_peak_dbtp(out, sr), abs=1e-5)  # the same interpolator
    assert times[0] == pytest.approx(0.05) and peaks.size == out.shape[1] // int(0.1 * sr)


def test_silence_report_has_no_levels():
    silence = np.zeros((2, 44100), np.float32)
    out, fin = finish(silence, silence, 44100, FinishSettings())
    report = R.build_report("silence.wav", silence, out, 44100, fin)
    assert report["lufs_in"] is None and report["lufs_out"] is None
    files = R.report_files("silence.wav", report)  # JSON without NaN, a PNG all the same
    assert json.loads(files["report/silence.wav.json"])["lufs_out"] is None and files["report/silence.wav.png"]


def test_a_feedback_delay_is_reported_only_when_undone_as_one():
    single = R.estimates({"echo_removed": True, "echo_delay_s": 0.2, "echo_gain": 0.4, "echo_feedback": 0.0})
    fed = R.estimates({"echo_removed": True, "echo_delay_s": 0.2, "echo_gain": 0.4, "echo_feedback": 0.35})
    assert "echo_feedback" not in single and fed["echo_feedback"] == 0.35
    assert "feedback 0.35" in R._estimates_line({"estimates": fed})
    assert "feedback" not in R._estimates_line({"estimates": single})


def test_every_echo_undone_is_reported():
    taps = [{"delay_s": 0.13, "gain": 0.4, "feedback": 0.0}, {"delay_s": 0.31, "gain": 0.3, "feedback": 0.0}]
    e = R.estimates({"echo_removed": True, "echo_delay_s": 0.13, "echo_gain": 0.4, "echo_feedback": 0.0, "echo_taps": taps})
    assert e["echo_taps"] == taps and e["echo_delay_s"] == 0.13  # the first tap's fields stay
    assert "then echo at 310 ms, gain 0.30: removed" in R._estimates_line({"estimates": e})
    assert "echo_taps" not in R.estimates({"echo_removed": False, "echo_delay_s": 0.2, "echo_gain": 0.1, "echo_taps": []})
