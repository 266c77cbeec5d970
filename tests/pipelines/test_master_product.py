"""`automaster master` as the README shows it (real Ray, real MLflow, the shipped model, real
music): a preset, a reference and an amount; per-file reports; the end-of-job table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automaster.audio import read_audio
from automaster.cli import main
from automaster.dsp.loudness import integrated_loudness, true_peak_dbtp

REPO = Path(__file__).resolve().parents[2]
MUSIC = REPO / "tests" / "data" / "music"
REFERENCE_TRACK = MUSIC / "d01_librosa_brahms_hungarian_dance_5.flac"


def test_master_with_preset_reference_and_amount(ray_local, tmp_path, capsys):
    out = tmp_path / "mastered"
    code = main(["master", "--input", str(MUSIC), "--out", str(out), "--preset", "streaming", "--reference",
                 str(REFERENCE_TRACK), "--amount", "0.7", "--pictures", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 3
    table = capsys.readouterr().out
    for f in summary["files"]:
        audio, sr = read_audio(str(out / f["output"]))
        assert integrated_loudness(audio, sr) == pytest.approx(-14.0, abs=0.3)
        assert true_peak_dbtp(audio, sr) <= -1.0 + 1e-3  # 24-bit rounding
        report = json.loads((out / "report" / (f["output"][len("audio/"):] + ".json")).read_text())
        assert [s["stage"] for s in report["stages"]][:3] == ["restore", "reference", "amount"]
        assert report["settings"]["preset"] == "streaming" and report["settings"]["amount"] == 0.7
        assert (out / "report" / (f["output"][len("audio/"):] + ".png")).is_file()
        assert f["rel_path"] in table and f["applied"] in table
    assert "LUFS in -> out" in table
