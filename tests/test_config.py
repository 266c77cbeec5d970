import json

import pytest

from automaster.config import Config, ConfigError, load_config, save_config


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(overrides=["train.lr=3e-4", "model.mode=params", "train.use_gpu=yes", "demaster.variants=3"])
    assert cfg.train.lr == 3e-4 and cfg.model.mode == "params" and cfg.train.use_gpu is True
    assert cfg.demaster.variants == 3 and cfg.audio.n_mels == 128


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 0.01\nepochs = 3\n[loss]\nparams = 2\n")
    cfg = load_config(path, ["train.epochs=5"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.loss.params) == (0.01, 5, 2.0)


def test_yaml_and_json_round_trip(tmp_path):
    cfg = load_config(overrides=["loss.perceptual=0.5"])
    save_config(cfg, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg
    (tmp_path / "c.yaml").write_text("model:\n  unet_depth: 3\n")
    assert load_config(tmp_path / "c.yaml").model.unet_depth == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown key"),
        ("nosuch.x=1", r"unknown section\(s\): nosuch"),
        ("train.epochs=x", "expected int"),
        ("train.max_minutes=nan", "train.max_minutes: expected a number"),
        ("train.lr=NaN", "expected a number"),
        ("train.use_gpu=maybe", "expected bool"),
        ("trainlr", "section.key=value"),
    ],
)
def test_bad_overrides_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


@pytest.mark.parametrize("value", [float("nan"), -0.5])
def test_max_forecast_error_must_be_a_share(value):
    from automaster.config import MasterConfig

    with pytest.raises(ConfigError, match="max_forecast_error must be >= 0"):
        MasterConfig(max_forecast_error=value)
    assert MasterConfig(max_forecast_error=float("inf")).max_forecast_error == float("inf")


@pytest.mark.parametrize("value", [float("nan"), -0.5])
def test_max_limiting_db_must_be_a_bound(value):
    from automaster.config import MasterConfig

    with pytest.raises(ConfigError, match="max_limiting_db must be >= 0"):
        MasterConfig(max_limiting_db=value)
    assert MasterConfig(max_limiting_db=None).max_limiting_db is None


def test_unknown_key_in_file_is_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\ndepth = 3\n")
    with pytest.raises(ConfigError, match="depth"):
        load_config(path)


def test_flat_dict_for_mlflow():
    flat = Config().flat_dict()
    assert flat["train.lr"] == Config().train.lr
    assert json.dumps(flat)  # serialisable
