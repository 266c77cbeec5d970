"""The evaluate job: the distances it reports (analytic checks), one file without Ray (given
degraded pairs), and `automaster evaluate` end to end on real Ray, real MLflow and the music in
tests/data with a tiny untrained cascade (our degrader on a folder; pedalboard on the FMA test
split, whose silent track must be recorded, not fatal)."""

from __future__ import annotations

import csv
import io
import json
import math

import mlflow
import numpy as np
import pytest
import soundfile as sf

from automaster.cli import main
from automaster.effects.params import PARAM_NAMES
from automaster.pedalboard_damage import MAPPED_PARAMS
from automaster.config import EvalConfig, MasterConfig
from automaster.evaluation.baselines import BASELINES
from automaster.dsp.loudness import integrated_loudness
from automaster.evaluation.metrics import METRICS
from automaster.evaluation.report import format_table, metrics_csv, summarise
from automaster.pipelines.evaluate import Evaluator, list_clean, match_degraded
from tests.audio_fixtures import D01
from tests.test_mastering import make_checkpoint

SR = 44100


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


# ---------------------------------------------------------------------------- listing


def test_list_clean_takes_the_fma_test_split_and_every_file_of_a_folder(data_dir):
    rows, listing = list_clean(str(data_dir / "fma"), None, 0)
    assert (listing["kind"], listing["split"]) == ("fma", "test")
    assert [(r["track_id"], r["rel_path"]) for r in rows] == [("000010", "000/000010.mp3"), ("001777", "001/001777.mp3")]
    rows, listing = list_clean(str(data_dir / "fma"), "all", 3)
    assert listing["split"] == "all" and len(rows) == 3
    rows, listing = list_clean(str(data_dir / "music"), None, 0)
    assert (listing["kind"], listing["split"], len(rows)) == ("folder", "all", 3)
    with pytest.raises(ValueError, match="split"):
        list_clean(str(data_dir / "music"), "train", 0)


def test_match_degraded_by_relative_path_then_by_stem(tmp_path):
    for rel in ("a/x.wav", "b.flac"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    rows = [{"rel_path": "a/x.wav"}, {"rel_path": "b.mp3"}, {"rel_path": "c.wav"}]
    matched = [r["degraded_path"] for r in match_degraded(rows, str(tmp_path))]
    assert matched == [str(tmp_path / "a/x.wav"), str(tmp_path / "b.flac"), ""]


# ---------------------------------------------------------------------------- one file, no Ray


def test_given_pairs_have_no_oracle_chain_and_no_parameter_errors(ckpt, tmp_path):
    audio, sr = sf.read(D01, frames=3 * SR, dtype="float32", always_2d=True)
    clean = tmp_path / "clean.wav"
    degraded = tmp_path / "degraded.wav"
    sf.write(clean, audio, sr)
    sf.write(degraded, 0.5 * audio + 0.001 * np.random.default_rng(0).standard_normal(audio.shape).astype(np.float32), sr)
    settings = EvalConfig(seed=0, degrader="given", clip_seconds=2.0, mono=True, inversions=("chain", "griffinlim"))
    evaluator = Evaluator(ckpt, settings, MasterConfig(iterations=2, seed=0))
    result = evaluator.evaluate({"track_id": "t", "path": str(clean), "rel_path": "clean.wav", "degraded_path": str(degraded)})
    assert result["status"] == "ok", result["reason"]
    assert result["channels"] == 1 and result["duration_s"] == pytest.approx(2.0)
    assert set(result["inversions"]) == {"identity", "identity_loudness", "normalised", "oracle_mel_griffinlim", "chain", "griffinlim"}
    assert result["parameters"] == {} and result["true_params_known"] == "none"
    identity = result["inversions"]["identity"]
    assert identity["loudness_err_lu"] == pytest.approx(20 * math.log10(2), abs=0.1)  # a 6 dB quieter copy
    assert identity["si_sdr_db"] > 20.0  # faint noise under music: little distortion
    assert result["inversions"]["identity_loudness"]["loudness_err_lu"] < 0.01
    normalised = result["inversions"]["normalised"]  # plain loudness normalisation: -14 LUFS under -1 dBTP
    assert normalised["true_peak_dbtp"] <= -0.95 and normalised["si_sdr_db"] > 15.0
    assert normalised["loudness_err_lu"] == pytest.approx(abs(-14.0 - integrated_loudness(audio[SR // 2 : SR // 2 + 2 * SR].mean(1), SR)), abs=0.3)
    assert result["inversions"]["griffinlim"]["si_sdr_db"] is None  # no phase alignment, no SI-SDR
    assert "normalised" not in result["inversion_notes"]  # -14 LUFS reached: nothing to say


def test_a_near_silent_degraded_file_says_why_normalised_kept_its_level(ckpt, tmp_path):
    """The loudness stage refuses a gain above 24 dB: the normalised row is the input at its
    level, and the refusal is in the record, metrics.csv's reason, metrics.json and the table."""
    audio, sr = sf.read(D01, frames=3 * SR, dtype="float32", always_2d=True)
    clean, degraded = tmp_path / "clean.wav", tmp_path / "quiet.wav"
    sf.write(clean, audio, sr)
    sf.write(degraded, audio * np.float32(10 ** (-35 / 20)), sr)  # about -50 LUFS: +36 dB to -14
    settings = EvalConfig(seed=0, degrader="given", clip_seconds=2.0, mono=True, inversions=("chain",))
    evaluator = Evaluator(ckpt, settings, MasterConfig(iterations=2, seed=0))
    result = evaluator.evaluate({"track_id": "q", "path": str(clean), "rel_path": "clean.wav", "degraded_path": str(degraded)})
    assert result["status"] == "ok", result["reason"]
    note = result["inversion_notes"]["normalised"]
    assert note.startswith("refused:") and "24 dB" in note
    normalised, identity = result["inversions"]["normalised"], result["inversions"]["identity"]
    assert normalised["loudness_err_lu"] == pytest.approx(identity["loudness_err_lu"], abs=0.01)  # the level kept

    rows = list(csv.DictReader(io.StringIO(metrics_csv([result]))))
    assert next(r for r in rows if r["inversion"] == "normalised")["reason"] == note
    assert next(r for r in rows if r["inversion"] == "identity")["reason"] == ""
    summary = summarise([result], {"degrader": "given", "seed": 0, "clip_seconds": 2.0, "model": "m"})
    assert summary["inversions"]["normalised"]["notes"] == {"clean.wav": note}
    assert f"note: normalised on clean.wav: {note}" in format_table(summary).splitlines()


# ---------------------------------------------------------------------------- end to end


def _evaluate(capsys, *args):
    code = main(["evaluate", *args])
    return code, capsys.readouterr().out


def test_evaluate_end_to_end_our_degrader(ray_local, ckpt, data_dir, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "eval"
    code, printed = _evaluate(
        capsys, "--model", ckpt, "--clean", str(data_dir / "music"), "--out", str(out), "--clip-seconds", "3",
        "--iterations", "4", "--workers", "2", "--tracking-uri", uri, "--run-name", "eval-ours", "--ray",
    )
    assert code == 0
    for name in ("identity", "oracle_chain", "chain", "mask", "griffinlim", "SI-SDR", "forecast error"):
        assert name in printed

    metrics = json.loads((out / "metrics.json").read_text())
    cfg = metrics["config"]
    assert (cfg["n_files"], cfg["n_ok"], cfg["n_failed"], cfg["degrader"], cfg["seed"]) == (3, 3, 0, "ours", 1)
    assert cfg["model"] == ckpt and cfg["inversions"] == ["chain", "mask", "griffinlim"] and cfg["clip_seconds"] == 3.0
    assert list(metrics["inversions"]) == [*BASELINES, "chain", "mask", "griffinlim"]
    files = {f["rel_path"] for f in metrics["files"]}
    assert len(files) == 3 and all(f["status"] == "ok" and f["channels"] == 2 for f in metrics["files"])
    for name, entry in metrics["inversions"].items():
        expected = set(METRICS) - ({"si_sdr_db"} if "griffinlim" in name else set())
        assert set(entry["metrics"]) == expected, name
        for stats in entry["metrics"].values():
            assert set(stats["per_file"]) == files and stats["n"] == 3
            assert stats["mean"] is not None and math.isfinite(stats["mean"])
    inversions = metrics["inversions"]
    assert math.isfinite(inversions["identity"]["metrics"]["si_sdr_db"]["mean"])
    assert inversions["oracle_chain"]["metrics"]["mel_l1_db"]["mean"] < inversions["identity"]["metrics"]["mel_l1_db"]["mean"]
    assert inversions["oracle_chain"]["metrics"]["si_sdr_db"]["mean"] > inversions["identity"]["metrics"]["si_sdr_db"]["mean"]
    assert inversions["identity_loudness"]["metrics"]["loudness_err_lu"]["mean"] < 0.05
    assert set(metrics["parameters"]) == set(PARAM_NAMES)
    assert all(p["abs_err"]["n"] == 3 for p in metrics["parameters"].values())

    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))
    assert len(rows) == 3 * 8 and {r["inversion"] for r in rows} == set(metrics["inversions"])
    assert len((out / "parameters.csv").read_text().strip().splitlines()) == 1 + 3 * len(PARAM_NAMES)

    client = mlflow.MlflowClient(uri)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "eval-ours"
    assert run.data.metrics["identity/mel_l1_db"] == pytest.approx(inversions["identity"]["metrics"]["mel_l1_db"]["mean"])
    assert "chain/si_sdr_db" in run.data.metrics and "forecast/abs_err/eq_low_gain_db" in run.data.metrics
    assert run.data.params["degrader"] == "ours" and run.data.params["seed"] == "1"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "metrics.csv", "parameters.csv"}


def test_evaluate_pedalboard_on_the_fma_test_split(ray_local, ckpt, data_dir, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "eval"
    code, _ = _evaluate(
        capsys, "--model", ckpt, "--clean", str(data_dir / "fma"), "--out", str(out), "--degrader", "pedalboard",
        "--inversions", "chain", "--clip-seconds", "3", "--iterations", "2", "--workers", "2", "--tracking-uri", uri,
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    cfg = metrics["config"]
    assert (cfg["split"], cfg["corpus_kind"], cfg["degrader"], cfg["n_ok"], cfg["n_failed"]) == ("test", "fma", "pedalboard", 1, 1)
    assert metrics["failures"] == [{"rel_path": "001/001777.mp3", "path": str(data_dir / "fma/fma_small/001/001777.mp3"),
                                    "reason": metrics["failures"][0]["reason"]}]
    assert "silent" in metrics["failures"][0]["reason"]
    assert list(metrics["inversions"]) == [*BASELINES, "chain"]  # oracle_chain: the mapped parameters
    assert set(metrics["parameters"]) == set(MAPPED_PARAMS)
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))
    assert [r["status"] for r in rows if r["rel_path"] == "001/001777.mp3"] == ["error"]
    assert mlflow.MlflowClient(uri).get_run(metrics["mlflow_run_id"]).data.metrics["files_failed"] == 1


def test_evaluate_usage_errors(ckpt, data_dir, tmp_path, capsys):
    code = main(["evaluate", "--model", ckpt, "--clean", str(data_dir / "music"), "--out", str(tmp_path / "x"),
                 "--inversions", "chain,bogus"])
    assert code == 2 and "bogus" in capsys.readouterr().err
    code = main(["evaluate", "--model", ckpt, "--clean", str(data_dir / "music"), "--out", str(tmp_path / "x"),
                 "--degraded", str(data_dir / "music"), "--degrader", "ours"])
    assert code == 2 and "--degraded" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, line",
    [
        (["--clip-seconds", "nan"], "automaster evaluate: error: --clip-seconds must be >= 1, got nan"),
        (["--iterations", "0"], "automaster evaluate: error: --iterations must be >= 1, got 0"),
        (["--limit", "-1"], "automaster evaluate: error: --limit must be >= 0, got -1"),
    ],
)
def test_a_bad_value_is_named_by_its_flag(ckpt, data_dir, tmp_path, capsys, args, line):
    code = main(["evaluate", "--model", ckpt, "--clean", str(data_dir / "music"), "--out", str(tmp_path / "x"), *args])
    assert code == 2 and capsys.readouterr().err.strip() == line
    assert not (tmp_path / "x").exists()  # refused before anything started


# ---------------------------------------------------------------------------- --effects


def test_effects_damage_only_the_named_effects_from_the_same_draw(ckpt, data_dir):
    """``--effects compressor,echo``: those take the full chain's drawn values, every other effect
    its neutral ones; echo alone is undone exactly by its true inverse (nothing else touched it)."""
    from automaster.degrade import degrade_clip
    from automaster.effects.echo import echo_inverse_time
    from automaster.effects.params import BY_NAME
    from automaster.dsp.metrics import si_sdr

    row = {"track_id": "000010", "path": str(data_dir / "fma/fma_small/000/000010.mp3"), "rel_path": "000/000010.mp3"}
    truth = {}
    for effects in (("eq", "compressor", "reverb", "echo"), ("compressor", "echo")):
        settings = EvalConfig(seed=1, degrader="ours", clip_seconds=2.0, mono=True, inversions=("chain",), effects=effects)
        result = Evaluator(ckpt, settings, MasterConfig(iterations=2, seed=0)).evaluate(row)
        assert result["status"] == "ok", result["reason"]
        truth[effects] = result["true_params"]
    every, some = truth[("eq", "compressor", "reverb", "echo")], truth[("compressor", "echo")]
    for name, value in some.items():
        effect = BY_NAME[name].effect
        if effect in ("compressor", "echo"):
            assert value == pytest.approx(every[name]), name  # the same draw
        elif BY_NAME[name].neutral is not None and name != "output_gain_db":
            assert value == pytest.approx(BY_NAME[name].neutral), name
    assert every["reverb_wet"] > 0 and some["reverb_wet"] == 0 and every["eq_high_gain_db"] != 0

    audio, _ = sf.read(D01, frames=3 * SR, dtype="float32", always_2d=True)
    clean = np.ascontiguousarray(audio.T)
    damaged = degrade_clip(clean, SR, 1, "t", effects=("echo",))
    p = {k: float(v.mean()) for k, v in damaged.params.items()}
    undone = echo_inverse_time(damaged.audio[0].numpy(), SR, p["echo_delay_s"], p["echo_gain"])
    assert p["echo_gain"] > 0.05 and si_sdr(undone, clean) > 40.0  # the echo, and nothing else
    full = degrade_clip(clean, SR, 1, "t").audio[0].numpy()
    assert si_sdr(full, clean) < si_sdr(damaged.audio[0].numpy(), clean) - 3.0


@pytest.mark.parametrize(
    "args, text",
    [
        (["--effects", "eq,chorus"], "automaster evaluate: error: --effects: expected a comma-separated subset of eq, compressor, reverb, echo (or all), got 'eq,chorus'"),
        (["--effects", "eq", "--degrader", "pedalboard"], "automaster evaluate: error: --effects restricts our degrader's damage; the 'pedalboard' degrader has its own"),
    ],
)
def test_bad_effects_exit_2_in_one_line(ckpt, data_dir, tmp_path, capsys, args, text):
    code = main(["evaluate", "--model", ckpt, "--clean", str(data_dir / "music"), "--out", str(tmp_path / "x"), *args])
    assert code == 2 and capsys.readouterr().err.strip() == text
    assert not (tmp_path / "x").exists()
