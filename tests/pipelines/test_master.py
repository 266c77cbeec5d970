"""The master job end to end: real Ray (actor pool), real MLflow (sqlite), real music, broken
files and a non-audio file in a nested folder; each inversion; re-runs skip; --overwrite redoes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import soundfile as sf

from automaster.cli import main
from automaster.pipelines.master import run_master
from tests.audio_fixtures import make_bad_inputs, make_good_inputs
from tests.test_mastering import make_checkpoint

GOOD = {"wav16": "d01_pcm16.wav", "wav24_48k": "sub/d02_pcm24_48k.wav", "ogg": "sub/deeper/d01.ogg",
        "mp3": "d02.mp3", "mono_22k": "sub/d01_mono_22k.wav"}
BAD = {"empty": "empty.wav", "text": "sub/notes.wav", "truncated_flac": "truncated.flac"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("master_in")
    good = make_good_inputs(tmp / "_good", duration_s=1.5)
    bad = make_bad_inputs(tmp / "_bad")
    root = tmp / "in"
    for src, names in ((good, GOOD), (bad, BAD)):
        for key, rel in names.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src[key], root / rel)
    (root / "README.txt").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _run(ckpt, folder, out, uri, **kw):
    return run_master(ckpt, str(folder), str(out), workers=2, tracking_uri=uri, progress=False, **kw)


def _expected_outputs():
    return {rel if not rel.endswith(".mp3") else rel[:-4] + ".flac" for rel in GOOD.values()}


@pytest.fixture(scope="module")
def chain_run(ray_local, ckpt, folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    summary = _run(ckpt, folder, tmp / "out", uri, inversion="chain", run_name="chain", pictures=True)
    return summary, tmp / "out", uri


def test_chain_outputs_mirror_the_input_and_summary_lists_everything(chain_run, folder):
    summary, out, _ = chain_run
    assert (summary["ok"], summary["failed"], summary["skipped"], summary["passed_over"]) == (5, 3, 0, 1)
    assert summary["mode"] == "ray"
    written = {str(p.relative_to(out / "audio")) for p in (out / "audio").rglob("*") if p.is_file()}
    assert written == _expected_outputs()
    for rel in _expected_outputs():
        assert (out / "spectrograms" / f"{rel}.png").exists() and (out / "debug" / f"{rel}.png").exists()
        assert set(json.loads((out / "parameters" / f"{rel}.json").read_text())["params"]) >= {"comp_ratio", "eq_low_gain_db"}
    for key, rel in GOOD.items():  # rate, channels and length kept
        src = sf.info(str(folder / rel))
        dst = sf.info(str(out / "audio" / (rel[:-4] + ".flac" if rel.endswith(".mp3") else rel)))
        assert (dst.samplerate, dst.channels) == (src.samplerate, src.channels), key
        if key != "mp3":  # an mp3 header's frame count is the decoder's estimate
            assert dst.frames == src.frames, key
    on_disk = json.loads((out / "summary.json").read_text())
    status = {f["rel_path"]: f for f in on_disk["files"]}
    assert {r for r, f in status.items() if f["status"] == "ok"} == set(GOOD.values())
    assert {r for r, f in status.items() if f["status"] == "error"} == set(BAD.values())
    assert "empty" in status["empty.wav"]["reason"] and "text" in status["sub/notes.wav"]["reason"]
    assert on_disk["passed_over_files"] == [{"path": str(folder / "README.txt"), "reason": "not an audio file (by its extension)"}]
    ok = status["d01_pcm16.wav"]
    assert ok["lufs_before"] is not None and ok["true_peak_after_dbtp"] is not None and ok["seconds"] > 0
    assert ok["peak_after_dbfs"] <= 0.0


def test_chain_mlflow_run_finished_with_artifacts(chain_run):
    summary, _, uri = chain_run
    client = mlflow.MlflowClient(uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["inversion"] == "chain" and run.data.params["model_mode"] == "cascade"
    assert run.data.metrics["files_ok"] == 5 and run.data.metrics["files_failed"] == 3
    assert len(client.get_metric_history(run.info.run_id, "file/seconds")) == 5
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "spectrograms", "audio", "overview.png"} <= top
    excerpts = client.list_artifacts(run.info.run_id, "audio")
    assert len(excerpts) == 2 and all(a.path.endswith(".wav") for a in excerpts)
    assert len(client.list_artifacts(run.info.run_id, "spectrograms")) == 4


def test_rerun_skips_and_overwrite_redoes(chain_run, ckpt, folder):
    _, out, uri = chain_run
    target = out / "audio" / "d01_pcm16.wav"
    stamp = target.stat().st_mtime_ns
    again = _run(ckpt, folder, out, uri, inversion="chain", ray=False, pictures=True)
    assert (again["ok"], again["skipped"], again["failed"]) == (0, 5, 3)  # broken files are retried
    assert target.stat().st_mtime_ns == stamp
    assert {f["status"] for f in again["files"] if f["rel_path"] in GOOD.values()} == {"skipped"}
    redo = _run(ckpt, folder, out, uri, inversion="chain", overwrite=True, ray=False, pictures=True)
    assert (redo["ok"], redo["skipped"]) == (5, 0)
    assert target.stat().st_mtime_ns != stamp


@pytest.mark.parametrize("inversion", ["mask", "griffinlim"])
def test_spectral_inversions_through_the_job(ckpt, folder, tmp_path, inversion):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = _run(ckpt, folder, tmp_path / "out", uri, inversion=inversion, iterations=4, target_lufs=-16.0, true_peak_dbtp=-1.0,
                   ray=False, pictures=True)
    assert (summary["ok"], summary["failed"], summary["passed_over"], summary["mode"]) == (5, 3, 1, "in-process")
    written = {str(p.relative_to(tmp_path / "out" / "audio")) for p in (tmp_path / "out" / "audio").rglob("*") if p.is_file()}
    assert written == _expected_outputs()
    stereo = next(f for f in summary["files"] if f["rel_path"] == "d01_pcm16.wav")
    assert abs(stereo["lufs_after"] - -16.0) < 0.5 and stereo["true_peak_after_dbtp"] <= -0.95
    assert (tmp_path / "out" / "debug" / "sub" / "deeper" / "d01.ogg.png").exists()
    assert (tmp_path / "out" / "spectrograms" / "d02.flac.png").exists()
    assert mlflow.MlflowClient(uri).get_run(summary["mlflow_run_id"]).info.status == "FINISHED"


def test_cli_usage_errors_exit_2(tmp_path, folder, capsys):
    restore = make_checkpoint(tmp_path / "restore", "restore")
    code = main(["master", "--model", restore, "--input", str(folder), "--out", str(tmp_path / "o"), "--inversion", "chain"])
    assert code == 2 and "'restore'" in capsys.readouterr().err
    code = main(["master", "--model", str(tmp_path / "nope"), "--input", str(folder), "--out", str(tmp_path / "o")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    if not (Path(__file__).resolve().parents[2] / "models" / "reference").exists():
        code = main(["master", "--input", str(folder), "--out", str(tmp_path / "o")])
        assert code == 2 and "--model" in capsys.readouterr().err
