import json
import os
import pickle

import pytest
import torch

from automaster.config import Config, ModelConfig
from automaster.model.cascade import Cascade
from automaster.model.checkpoint import (
    CheckpointError, load_model, load_model_cached, load_training_state, save_checkpoint, strip_checkpoint,
)

TINY = dict(unet_depth=2, unet_width=4, lstm_hidden=8, lstm_layers=1)


@pytest.fixture
def config():
    return Config(model=ModelConfig(mode="cascade", **TINY))


@pytest.fixture
def trained(config):
    """A model whose weights differ from a fresh one."""
    torch.manual_seed(0)
    model = Cascade.from_config(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    for _ in range(3):
        out = model(torch.rand(2, 1, 128, 16))
        loss = out["mel"].mean() + out["params"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(1.0)  # flat metric: the scheduler halves the LR
    return model.eval(), opt, sched


@pytest.mark.parametrize("as_file", [False, True])
def test_round_trip_gives_identical_outputs(tmp_path, config, trained, as_file):
    model, _, _ = trained
    target = tmp_path / "ckpt" / ("model.pt" if as_file else "")
    written = save_checkpoint(target, model, config, extra={"val/mel_l1_db": 3.5, "step": 12}, epoch=4)
    assert written.name == "model.pt" and (written.parent / "config.json").is_file()

    loaded, cfg, meta = load_model(tmp_path / "ckpt" if not as_file else written)
    assert cfg == config
    assert not loaded.training
    assert meta["epoch"] == 4 and meta["extra"] == {"val/mel_l1_db": 3.5, "step": 12}
    mel = torch.rand(2, 1, 128, 21)
    with torch.no_grad():
        a, b = model(mel), loaded(mel)
    assert torch.equal(a["mel"], b["mel"]) and torch.equal(a["params"], b["params"])
    fresh = Cascade.from_config(config).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(mel)["mel"], a["mel"])  # the comparison can fail


def test_model_file_holds_only_plain_values(tmp_path, config, trained):
    path = save_checkpoint(tmp_path, trained[0], config)
    payload = torch.load(path, weights_only=True)  # raises on any pickled object
    assert set(payload) >= {"format", "version", "model", "epoch", "extra"}
    assert all(isinstance(v, torch.Tensor) for v in payload["model"].values())


def test_training_state_round_trip(tmp_path, config, trained):
    model, opt, sched = trained
    save_checkpoint(tmp_path, model, config, optimizer=opt, scheduler=sched, epoch=7)
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2, patience=0, factor=0.5)
    state = load_training_state(tmp_path, opt2, sched2)
    assert state["epoch"] == 7
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] < 1e-2
    first = next(iter(opt.state.values()))
    assert torch.equal(next(iter(opt2.state.values()))["exp_avg"], first["exp_avg"])
    assert sched2.num_bad_epochs == sched.num_bad_epochs


def test_training_state_missing_is_an_error(tmp_path, config, trained):
    model, opt, _ = trained
    save_checkpoint(tmp_path, model, config)
    _, _, meta = load_model(tmp_path)
    assert meta["has_training_state"] is False
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_training_state(tmp_path, opt)


def test_not_a_checkpoint_raises(tmp_path, config, trained):
    bogus = tmp_path / "model.pt"
    bogus.write_text("this is not a checkpoint\n")
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(CheckpointError, match="model.pt"):
        load_model(tmp_path)
    # A pickled object is refused by weights_only, not executed.
    bogus.write_bytes(pickle.dumps({"format": "automaster-cascade", "model": object()}, protocol=2))
    with pytest.raises(CheckpointError, match="model.pt"):
        load_model(bogus)
    # A plain tensor file is readable but is not ours.
    torch.save({"weights": torch.zeros(3)}, bogus)
    with pytest.raises(CheckpointError, match="not an automaster checkpoint"):
        load_model(bogus)


def test_missing_files_name_the_path(tmp_path, config, trained):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    save_checkpoint(tmp_path / "c", trained[0], config)
    (tmp_path / "c" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "c")


def test_config_that_does_not_fit_the_weights(tmp_path, config, trained):
    save_checkpoint(tmp_path, trained[0], config)
    data = config.to_dict()
    data["model"]["unet_width"] = 6
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(tmp_path)
    data["model"]["nonsense"] = 1
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="nonsense"):
        load_model(tmp_path)


def test_save_rejects_non_plain_extra_and_mode_mismatch(tmp_path, config, trained):
    with pytest.raises(CheckpointError, match="extra"):
        save_checkpoint(tmp_path, trained[0], config, extra={"when": object()})
    other = Config(model=ModelConfig(mode="restore", **TINY))
    with pytest.raises(CheckpointError, match="mode"):
        save_checkpoint(tmp_path, trained[0], other)
    assert not (tmp_path / "model.pt").exists()


def test_wrapped_model_is_unwrapped(tmp_path, config, trained):
    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel's .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    save_checkpoint(tmp_path, Wrapper(trained[0]), config)
    loaded, _, _ = load_model(tmp_path)
    key = next(iter(loaded.state_dict()))
    assert torch.equal(loaded.state_dict()[key], trained[0].state_dict()[key])


def test_strip_keeps_weights_and_metrics_and_drops_training_state(tmp_path, config, trained):
    model, opt, sched = trained
    full = save_checkpoint(tmp_path / "full", model, config, extra={"m": 1.5}, optimizer=opt, scheduler=sched, epoch=3)
    slim = strip_checkpoint(tmp_path / "full", tmp_path / "slim")
    assert slim.stat().st_size < full.stat().st_size
    loaded, cfg, meta = load_model(tmp_path / "slim")
    assert cfg == config and meta["epoch"] == 3 and meta["extra"] == {"m": 1.5} and not meta["has_training_state"]
    mel = torch.rand(1, 1, 128, 16)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel)["params"], model(mel)["params"])


def test_cached_load_reads_a_checkpoint_once_per_process_until_it_changes(tmp_path, config, trained):
    import os

    model, _, _ = trained
    save_checkpoint(tmp_path / "c", model, config)
    first = load_model_cached(tmp_path / "c")
    assert load_model_cached(tmp_path / "c" / "model.pt") is first  # the same checkpoint, however named
    assert load_model_cached(tmp_path / "c")[0] is not load_model(tmp_path / "c")[0]  # load_model stays fresh
    save_checkpoint(tmp_path / "c", Cascade.from_config(config), config)  # rewritten: read again
    stat = (tmp_path / "c" / "model.pt").stat()
    os.utime(tmp_path / "c" / "model.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    again = load_model_cached(tmp_path / "c")
    assert again is not first
    assert not torch.equal(next(again[0].parameters()), next(first[0].parameters()))
    with pytest.raises(CheckpointError):
        load_model_cached(tmp_path / "missing")


class _Runs:
    def __reduce__(self):
        return (os.system, ("echo should never run",))


def test_malicious_and_empty_checkpoints_get_a_plain_reason(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    bogus = tmp_path / "model.pt"
    torch.save({"format": "automaster-cascade", "model": _Runs()}, bogus)
    with pytest.raises(CheckpointError) as refused:
        load_model(tmp_path)
    message = str(refused.value)
    assert "not plain data" in message and "posix.system" in message and "refused without running" in message
    assert "weights_only" not in message and "False" not in message and "\n" not in message  # torch's advice left out
    bogus.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model.pt is not a readable checkpoint: the file is empty or cut short"):
        load_model(tmp_path)
