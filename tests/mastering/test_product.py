"""The Masterer as users know it (issue 13), with the shipped reference model on real music:
safe by default, amount 0 is the input, a reference lowers tone error, silence stays silence,
the report files hold the figures, and user mistakes are named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from automaster.audio import read_audio
from automaster.cli import main
from automaster.config import PRESETS
from automaster.dsp.loudness import true_peak_dbtp
from automaster.dsp.tone import tone_error_db, tone_profile
from automaster.mastering import Masterer, MasteringError
from automaster.pipelines.master import master_file

REPO = Path(__file__).resolve().parents[2]
REFERENCE_MODEL = str(REPO / "models" / "reference")
MUSIC = REPO / "tests" / "data" / "music"
BRAHMS, FAIRY = MUSIC / "d01_librosa_brahms_hungarian_dance_5.flac", MUSIC / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac"


@pytest.fixture(scope="module")
def fairy():
    audio, sr = read_audio(str(FAIRY))
    return audio[:, : 6 * sr], sr


def test_default_output_never_exceeds_minus_one_dbtp(fairy):
    audio, sr = fairy
    hot = audio * np.float32(4.0)  # +12 dB: the input itself is far over full scale
    mastered, info = Masterer(REFERENCE_MODEL).master_audio(hot, sr)
    assert true_peak_dbtp(mastered, sr) <= -1.0
    assert info["true_peak_after_dbtp"] <= -1.0 and info["ceiling_dbtp"] == -1.0
    assert info["limiter_max_reduction_db"] > 0 and "limiter" in info["applied"]


def test_amount_zero_preset_none_returns_the_input(fairy):
    audio, sr = fairy
    mastered, info = Masterer(REFERENCE_MODEL, preset="none", amount=0.0).master_audio(audio, sr)
    assert np.array_equal(mastered, audio)
    assert info["applied"] == "amount 0.00" and info["limiter_max_reduction_db"] == 0.0


def test_reference_lowers_tone_error_on_real_music(fairy):
    audio, sr = fairy
    ref = tone_profile(*read_audio(str(BRAHMS)))
    plain, _ = Masterer(REFERENCE_MODEL).master_audio(audio, sr)
    matched, info = Masterer(REFERENCE_MODEL, reference=str(BRAHMS)).master_audio(audio, sr)
    # The two differ by up to 20 dB in places: the +-6 dB EQ closes over a third of the tone error.
    assert tone_error_db(tone_profile(matched, sr), ref) < 0.7 * tone_error_db(tone_profile(plain, sr), ref)
    assert info["lufs_after"] == pytest.approx(ref.lufs, abs=0.3) and info["true_peak_after_dbtp"] <= -1.0


@pytest.mark.parametrize("preset", list(PRESETS))
def test_silence_stays_silence(preset):
    silence = np.zeros((2, 44100 * 2), np.float32)
    mastered, _ = Masterer(REFERENCE_MODEL, preset=preset).master_audio(silence, 44100)
    assert not np.any(mastered)


def test_report_files_hold_the_figures(tmp_path):
    masterer = Masterer(REFERENCE_MODEL, preset="streaming", reference=str(BRAHMS), amount=0.8)
    status = master_file(masterer, str(FAIRY), str(tmp_path), "a/fairy.flac")
    assert status["status"] == "ok", status["reason"]
    report = json.loads((tmp_path / "report" / "a" / "fairy.flac.json").read_text())
    assert (tmp_path / "report" / "a" / "fairy.flac.png").stat().st_size > 50_000
    assert report["settings"]["preset"] == "streaming" and report["amount"] == 0.8
    assert {"grid_hz", "input_db", "output_db", "reference_db"} == set(report["spectrum"])
    assert len(report["short_term_lufs"]["output"]) > 50 and report["gain_reduction_curve_db"]["values"]
    assert {"echo_delay_s", "echo_gain", "echo_removed"} <= set(report["estimates"])
    # the shipped model's reverb wet share is neutral (its forecast is no better than the mean):
    # a neutral default is not an estimate, so no reverb time is reported
    assert "reverb_rt60_s" not in report["estimates"] and "reverb_wet" not in report["estimates"]
    assert report["lufs_out"] == pytest.approx(-14.0, abs=0.3) and report["true_peak_out_dbtp"] <= -1.0
    assert status["applied"].startswith("reference EQ, amount 0.80, to -14.0 LUFS")


def test_a_bad_reference_is_named(tmp_path):
    text = tmp_path / "ref.wav"
    text.write_text("not audio")
    with pytest.raises(MasteringError, match="--reference"):
        Masterer(REFERENCE_MODEL, reference=str(text))


def test_cli_mistakes_exit_2_before_any_cluster(tmp_path, capsys):
    base = ["master", "--input", str(MUSIC), "--out", str(tmp_path / "o")]
    assert main([*base, "--amount", "1.5"]) == 2
    assert "--amount" in capsys.readouterr().err
    assert main([*base, "--reference", str(tmp_path / "missing.wav")]) == 2
    assert "--reference" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--preset", "loud"])
    assert exc.value.code == 2
