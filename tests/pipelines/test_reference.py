"""The shipped reference model (models/reference/): loads, fits the size budget, and masters and
evaluates the bundled music out of the box (no --model)."""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf

from automaster.cli import default_inversion, main
from automaster.config import Config, ModelConfig
from automaster.model.cascade import Cascade
from automaster.model.checkpoint import load_model, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "models" / "reference"
MUSIC = REPO / "tests" / "data" / "music"


def test_reference_model_loads_and_fits_the_size_budget():
    model, config, meta = load_model(REFERENCE)
    assert config.model.mode == "cascade" and not meta["has_training_state"]
    assert (REFERENCE / "model.pt").stat().st_size <= 25 * 1024 * 1024
    for name in ("MODEL_CARD.md", "metrics.json", "train.toml"):
        assert (REFERENCE / name).is_file(), name
    metrics = json.loads((REFERENCE / "metrics.json").read_text())
    assert {"identity", "oracle_chain", "chain", "mask", "griffinlim"} <= set(metrics["ours"]["paths"])


def test_default_inversion_follows_the_model(tmp_path):
    assert default_inversion(str(REFERENCE)) == "chain"
    save_checkpoint(tmp_path / "p", Cascade(mode="params", lstm_hidden=8, lstm_layers=1), Config(model=ModelConfig(mode="params", lstm_hidden=8, lstm_layers=1)))
    assert default_inversion(str(tmp_path / "p")) == "chain"
    restore = ModelConfig(mode="restore", unet_depth=2, unet_width=8)
    save_checkpoint(tmp_path / "r", Cascade.from_config(Config(model=restore)), Config(model=restore))
    assert default_inversion(str(tmp_path / "r")) == "mask"
    assert default_inversion(str(tmp_path / "missing")) == "chain"


def test_the_shipped_default_path_measured_better_than_the_input():
    """The README's claim, from the committed evaluation: the default (chain) path beats the
    untouched input on SI-SDR, MR-STFT and mel L1, on our damage and on pedalboard's."""
    metrics = json.loads((REFERENCE / "metrics.json").read_text())
    for degrader in ("ours", "pedalboard"):
        paths = metrics[degrader]["paths"]
        chain, identity = paths["chain"], paths["identity"]
        assert chain["si_sdr_db"]["mean"] > identity["si_sdr_db"]["mean"] + 0.5, degrader
        assert chain["mrstft"]["mean"] < identity["mrstft"]["mean"], degrader
        assert chain["mel_l1_db"]["mean"] <= identity["mel_l1_db"]["mean"] + 0.01, degrader


def test_master_without_model_uses_the_reference(ray_local, tmp_path):
    out = tmp_path / "mastered"
    code = main(["master", "--input", str(MUSIC), "--out", str(out), "--true-peak", "-1",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    inputs = sorted(p for p in MUSIC.rglob("*") if p.suffix in (".flac", ".mp3", ".wav"))
    assert summary["ok"] == len(inputs) and summary["failed"] == 0
    for src in inputs:
        rel = src.relative_to(MUSIC)
        done = [p for p in (out / "audio" / rel.parent).glob(rel.stem + ".*")]
        assert done, rel
        info, ref = sf.info(str(done[0])), sf.info(str(src))
        assert (info.samplerate, info.channels) == (ref.samplerate, ref.channels)


def test_evaluate_without_model_uses_the_reference(ray_local, tmp_path):
    out = tmp_path / "eval"
    code = main(["evaluate", "--clean", str(MUSIC), "--out", str(out), "--clip-seconds", "5", "--iterations", "4",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["n_ok"] >= 2
    assert str(REFERENCE) in json.dumps(metrics["config"])
