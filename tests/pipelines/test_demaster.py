"""The demaster job end to end on real music, real Ray and a real MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from automaster.config import load_config
from automaster.dataset import DATASET_DIR, decode_row
from automaster.effects.params import PARAMS
from automaster.pipelines.demaster import run_demaster
from tests.audio_fixtures import UNREADABLE, make_bad_inputs

REPO = Path(__file__).resolve().parents[2]
FMA = REPO / "tests" / "data" / "fma"
SMALL = ["demaster.clip_seconds=4", "demaster.min_seconds=2", "demaster.workers=2"]


def _run(corpus, out, tracking_uri, *sets, ray=True):
    config = load_config(overrides=[*SMALL, *sets])
    return run_demaster(str(corpus), str(out), config, tracking_uri=tracking_uri, ray=ray, progress=False)


def _rows(out: Path) -> list[dict]:
    table = pq.read_table(out / DATASET_DIR)
    return sorted((decode_row(r) for r in table.to_pylist()), key=lambda r: (r["track_id"], r["variant"]))


@pytest.fixture(scope="module")
def fma_run(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("fma")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    summary = _run(FMA, tmp / "out", uri, "demaster.variants=2")
    return summary, tmp / "out", uri


def test_fma_fixture_good_tracks_ok_broken_ones_recorded(fma_run):
    summary, out, _ = fma_run
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (4, 3, 0)
    reasons = {f["track_id"]: f["reason"] for f in summary["failures"]}
    assert set(reasons) == {"001666", "001777", "001888"}
    assert "001666" in reasons["001666"] and "silent" in reasons["001777"] and "too short" in reasons["001888"]
    assert summary["tracks_per_s"] > 0
    assert set(summary["stage_seconds_mean"]) == {"decode", "effects", "mels", "png", "writes"}
    assert json.loads((out / "summary.json").read_text())["ok"] == 4


def test_dataset_rows_read_back_with_shapes_and_targets(fma_run):
    _, out, _ = fma_run
    rows = _rows(out)
    assert [(r["track_id"], r["variant"]) for r in rows] == [
        (t, v) for t in ("000002", "000003", "000005", "000010") for v in (0, 1)
    ]
    splits = {r["track_id"]: r["split"] for r in rows}
    assert splits == {"000002": "training", "000003": "training", "000005": "validation", "000010": "test"}
    for r in rows:
        n_frames = 1 + r["n_samples"] // 512
        assert r["mel_original_db"].shape == r["mel_degraded_db"].shape == (128, n_frames)
        assert r["n_samples"] == 4 * 44100  # 48 kHz 000010 resampled to 44.1 kHz
        assert r["wave_original"].shape == (r["n_samples"],)
        assert np.abs(r["wave_degraded"]).max() <= 1.0
        assert not np.allclose(r["mel_original_db"], r["mel_degraded_db"])
        for p in PARAMS:
            value = np.asarray(r[p.name])
            assert value.shape == ((n_frames,) if p.per_frame else ())
            assert np.all(value >= p.low - 1e-4) and np.all(value <= p.high + 1e-4), p.name
    # variants of a track differ; parameters are real draws, not constants
    assert rows[0]["reverb_rt60_s"] != rows[1]["reverb_rt60_s"]
    assert np.std([r["eq_low_gain_db"].mean() for r in rows]) > 0.5


def test_thesis_outputs_written_and_nothing_half_written(fma_run):
    _, out, _ = fma_run
    for tid in ("000002", "000005"):
        orig = out / "output_audio" / f"{tid}_original.wav"
        for v in (0, 1):
            deg = out / "output_audio" / f"{tid}_degraded_v{v}.wav"
            assert sf.info(deg).samplerate == 44100 and sf.info(deg).frames == sf.info(orig).frames
            assert (out / "output_spectrograms" / f"{tid}_v{v}.png").read_bytes()[:4] == b"\x89PNG"
            text = (out / "output_txt" / f"{tid}_v{v}.txt").read_text()
            assert "reverb_rt60_s" in text and " s" in text
    leftovers = [p for p in out.rglob("*") if p.is_file() and (".tmp" in p.name or p.name.startswith("."))]
    assert leftovers == []
    assert not (out / DATASET_DIR / "001666.parquet").exists()


def test_mlflow_run_records_the_job(fma_run):
    summary, _, uri = fma_run
    client = mlflow.MlflowClient(uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["tracks_ok"] == 4 and run.data.metrics["tracks_failed"] == 3
    assert run.data.params["variants"] == "2"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "failures.json", "spectrograms"} <= names


def test_same_seed_same_bytes_in_process_or_on_ray_other_seed_differs(tmp_path, ray_local, tracking_uri):
    a = _run(FMA, tmp_path / "a", tracking_uri, "demaster.limit=2")
    b = _run(FMA, tmp_path / "b", tracking_uri, "demaster.limit=2", "demaster.workers=1", ray=False)
    c = _run(FMA, tmp_path / "c", tracking_uri, "demaster.limit=2", "demaster.seed=7", ray=False)
    assert a["ok"] == b["ok"] == c["ok"] == 2
    assert (a["mode"], b["mode"]) == ("ray", "in-process")
    ta, tb, tc = (pq.read_table(tmp_path / x / DATASET_DIR).sort_by("track_id") for x in "abc")
    assert ta.equals(tb)
    assert not ta.column("mel_degraded_db").equals(tc.column("mel_degraded_db"))
    wav = "output_audio/000002_degraded.wav"
    assert (tmp_path / "a" / wav).read_bytes() == (tmp_path / "b" / wav).read_bytes()
    assert (tmp_path / "a" / wav).read_bytes() != (tmp_path / "c" / wav).read_bytes()


def test_rerun_skips_done_tracks_and_resumes_missing_ones(tmp_path, tracking_uri):
    out = tmp_path / "out"
    first = _run(FMA, out, tracking_uri, ray=False)
    assert first["ok"] == 4
    again = _run(FMA, out, tracking_uri, ray=False)
    assert (again["ok"], again["skipped"]) == (0, 4)
    (out / DATASET_DIR / "000003.parquet").unlink()  # an output lost: the track is no longer complete
    resumed = _run(FMA, out, tracking_uri, ray=False)
    assert (resumed["ok"], resumed["skipped"]) == (1, 3)
    rows = pq.read_table(out / DATASET_DIR).to_pylist()
    assert sorted(r["track_id"] for r in rows) == ["000002", "000003", "000005", "000010"]  # no duplicates


def test_bad_inputs_each_recorded_with_file_and_reason(tmp_path, ray_local, tracking_uri):
    files = make_bad_inputs(tmp_path / "zoo")
    summary = _run(tmp_path / "zoo", tmp_path / "out", tracking_uri, "demaster.min_seconds=0.5")
    failed = {Path(f["path"]).name: f["reason"] for f in summary["failures"]}
    must_fail = set(UNREADABLE) | {"hundred_samples", "silence"}
    assert {k for k, p in files.items() if p.name in failed} == must_fail
    for key in must_fail:
        assert files[key].name in failed[files[key].name]  # the reason names the file
    assert "silent" in failed["silence.wav"] and "too short" in failed["hundred_samples.wav"]
    assert summary["ok"] == len(files) - len(must_fail)  # 8 kHz, 96 kHz/24-bit, 5.1, overs, odd names
    rows = pq.read_table(tmp_path / "out" / DATASET_DIR).to_pylist()
    assert all(r["sample_rate"] == 44100 for r in rows) and len(rows) == summary["ok"]


def test_cli_reports_user_errors_in_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "jobs/demaster.py", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert res.returncode == 2
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(
        [sys.executable, "jobs/demaster.py", "--corpus", str(FMA), "--out", str(tmp_path / "o"), "--set", "demaster.nope=1"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert res.returncode == 2 and "unknown key" in res.stderr and "Traceback" not in res.stderr


def test_only_a_file_above_full_scale_counts_as_repaired(tmp_path, tracking_uri):
    """A 16-bit master that peaks at full scale is scaled under the 0.999 ceiling by less than
    0.01 dB: not a repair (before: every such file was listed as 'over range scaled')."""
    t = np.arange(3 * 44100) / 44100
    tone = np.sin(2 * np.pi * 441 * t)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "full_scale.wav", tone, 44100, subtype="PCM_16")  # peaks at 32767
    sf.write(tmp_path / "in" / "over.wav", 2.0 * tone, 44100, subtype="FLOAT")  # +6 dBFS
    summary = _run(tmp_path / "in", tmp_path / "out", tracking_uri, ray=False)
    assert summary["ok"] == 2, summary["failures"]
    assert summary["repairs"]["over_range_scaled"] == {"count": 1, "files": 1}
