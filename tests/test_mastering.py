"""Mastering one waveform / one file with a tiny untrained cascade (no Ray): every inversion,
real music, odd rates and channel counts, chunk seams, loudness, and the setup errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from automaster.config import load_config
from automaster.effects.params import PARAMS
from automaster.mastering import INVERSIONS, Masterer, MasteringError, plan_chunks, prepare_for_inference
from automaster.mastering import window as _window
from automaster.pipelines.master import master_file, output_rel_path, plan_output_names
from automaster.model.cascade import Cascade
from automaster.model.checkpoint import save_checkpoint
from tests.audio_fixtures import D01, make_bad_inputs, make_good_inputs, sine

TINY = ["model.unet_depth=2", "model.unet_width=8", "model.lstm_hidden=16", "model.lstm_layers=1"]


def make_checkpoint(folder, mode: str = "cascade"):
    config = load_config(overrides=[*TINY, f"model.mode={mode}"])
    torch.manual_seed(0)
    save_checkpoint(folder, Cascade.from_config(config), config)
    return str(folder)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def music():
    audio, sr = sf.read(D01, frames=3 * 44100, dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T), sr


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inputs")
    return {**make_good_inputs(tmp / "good", duration_s=1.5), **make_bad_inputs(tmp / "bad")}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; one file per thread is how the job runs
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("inversion", INVERSIONS)
def test_every_inversion_keeps_rate_channels_length_and_stereo(ckpt, music, inversion):
    audio, sr = music
    mastered, info = Masterer(ckpt, inversion, iterations=8).master_audio(audio, sr)
    assert mastered.shape == audio.shape and mastered.dtype == np.float32
    assert np.isfinite(mastered).all()
    assert np.abs(mastered).max() <= 1.0
    assert np.abs(mastered[0] - mastered[1]).max() > 1e-3  # stereo stays stereo
    assert np.abs(mastered).max() > 1e-3  # not silence
    assert info["chunks"] == 1 and info["peak_before_dbfs"] < 0


def test_inference_preparation_keeps_the_outputs():
    config = load_config(overrides=TINY)
    torch.manual_seed(0)
    model = Cascade.from_config(config).eval()
    x = torch.rand(1, 1, 128, 70)
    with torch.inference_mode():
        before = model(x)
        prepare_for_inference(model, torch.device("cpu"))
        after = model(x.contiguous(memory_format=torch.channels_last))
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eval"):
        prepare_for_inference(model.train(), torch.device("cpu"))


@pytest.mark.parametrize("inversion", ["mask", "griffinlim"])
def test_spectral_inversions_treat_stereo_linked(ckpt, music, inversion):
    # One set of mel gains (from the mono downmix) for every channel: a channel that is the other
    # at -6 dB comes out as the other at -6 dB (the U-Net never sees the channels apart).
    audio, sr = music
    pair = np.stack([audio[0], 0.5 * audio[0]])
    out, _ = Masterer(ckpt, inversion, iterations=4, init_phase=True).master_audio(pair, sr)
    if inversion == "mask":  # a real gain per bin on a linear transform: exact
        np.testing.assert_allclose(out[1], 0.5 * out[0], atol=1e-5 * np.abs(out).max())
    else:  # the mel's -60 dB floor clips the quieter channel's faintest bins a little differently
        residual = ((out[1] - 0.5 * out[0]) ** 2).sum() / ((0.5 * out[0]) ** 2).sum()
        assert 10 * np.log10(1 / residual) > 40


def test_mask_of_a_near_identity_unet_changes_little(ckpt, music):
    # The untrained U-Net's head starts near zero: its mel gain is small, so mask keeps the input.
    audio, sr = music
    mastered, _ = Masterer(ckpt, "mask").master_audio(audio, sr)
    err = np.abs(mastered - audio).max()
    assert 0 < err < 0.05 * np.abs(audio).max()


@pytest.mark.parametrize("inversion", INVERSIONS)
@pytest.mark.parametrize("case", ["wav24_48k", "mono_22k", "mono_8k", "hires_96k_24bit", "six_channels"])
def test_master_file_odd_rates_and_channels(ckpt, inputs, tmp_path, inversion, case):
    src = inputs[case]
    before = sf.info(str(src))
    status = master_file(Masterer(ckpt, inversion, iterations=4), str(src), str(tmp_path), src.name)
    assert status["status"] == "ok", status["reason"]
    out = tmp_path / "audio" / src.name
    after = sf.info(str(out))
    assert (after.samplerate, after.channels, after.frames) == (before.samplerate, before.channels, before.frames)
    assert after.subtype == "PCM_24"
    data, _ = sf.read(str(out), dtype="float32")
    assert np.isfinite(data).all() and np.abs(data).max() > 1e-4
    assert (tmp_path / "spectrograms" / f"{src.name}.png").stat().st_size > 1000
    assert (tmp_path / "debug" / f"{src.name}.png").exists()
    assert status["sample_rate"] == before.samplerate and status["channels"] == before.channels


def test_mp3_becomes_flac_and_parameters_are_written(ckpt, inputs, tmp_path):
    status = master_file(Masterer(ckpt, "chain"), str(inputs["mp3"]), str(tmp_path), "sub/d02.mp3")
    assert status["status"] == "ok", status["reason"]
    assert status["output"] == "audio/sub/d02.flac"
    assert sf.info(str(tmp_path / "audio" / "sub" / "d02.flac")).format == "FLAC"
    stats = json.loads((tmp_path / "parameters" / "sub" / "d02.flac.json").read_text())
    assert set(stats["params"]) == {p.name for p in PARAMS}
    for p in PARAMS:
        s = stats["params"][p.name]
        assert s["unit"] == p.unit and p.low - 1e-3 <= s["min"] <= s["mean"] <= s["max"] <= p.high + 1e-3
        assert (s["applied"] is None) == p.per_frame


def test_broken_files_are_reported_not_raised(ckpt, inputs, tmp_path):
    masterer = Masterer(ckpt, "chain")
    for key in ("empty", "text", "truncated_flac", "nan_wav"):
        status = master_file(masterer, str(inputs[key]), str(tmp_path), inputs[key].name)
        assert status["status"] == "error" and status["reason"], key
    assert not (tmp_path / "audio").exists()


def test_silence_and_tiny_files_master_cleanly(ckpt, inputs, tmp_path):
    masterer = Masterer(ckpt, "mask", target_lufs=-14.0, true_peak_dbtp=-1.0)
    for key in ("silence", "hundred_samples"):
        status = master_file(masterer, str(inputs[key]), str(tmp_path), inputs[key].name)
        assert status["status"] == "ok", (key, status["reason"])
        assert sf.info(str(tmp_path / "audio" / inputs[key].name)).frames == sf.info(str(inputs[key])).frames


def test_unclipped_output_gets_a_recorded_headroom_gain(ckpt, music):
    # An untrained forecaster asks the inverse chain for large gains: without a ceiling
    # (preset none) the result must still not clip.
    audio, sr = music
    mastered, info = Masterer(ckpt, "chain", preset="none").master_audio(audio * 4.0, sr)
    assert info["headroom_gain_db"] < 0
    assert info["peak_after_dbfs"] == pytest.approx(-0.1, abs=1e-3)
    assert np.abs(mastered).max() <= 1.0


def test_loudness_target_and_true_peak_ceiling(ckpt, music):
    loudness = pytest.importorskip("automaster.dsp.loudness", reason="automaster/dsp/loudness.py not landed yet")
    audio, sr = music
    mastered, info = Masterer(ckpt, "mask", target_lufs=-16.0, true_peak_dbtp=-1.0).master_audio(audio, sr)
    assert info["lufs_before"] is not None and info["true_peak_before_dbtp"] is not None
    measured = loudness.integrated_loudness(mastered, sr)
    assert abs(measured - info["lufs_after"]) < 1e-6
    assert abs(measured - -16.0) < 0.5
    assert loudness.true_peak_dbtp(mastered, sr) <= -1.0 + 0.05
    assert info["true_peak_after_dbtp"] <= -1.0 + 0.05


def test_crossfade_windows_sum_to_one_and_cover_the_track():
    n, sr = 20 * 48000 + 123, 48000
    chunks = plan_chunks(n, sr, chunk_s=4.0, context_s=0.5)
    assert len(chunks) == 5 and chunks[0].s0 == 0 and chunks[-1].s1 == n
    total = np.zeros(n)
    power = np.zeros(n)
    for c in chunks:
        total[c.s0 : c.s1] += _window(c.s0, c.s1 - c.s0, c.sample_in, c.sample_out, equal_power=False)
        power[c.s0 : c.s1] += _window(c.s0, c.s1 - c.s0, c.sample_in, c.sample_out, equal_power=True) ** 2
        assert c.f1 - c.f0 <= round(5.0 * 44100 / 512) + 1  # chunk + context: bounded
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    np.testing.assert_allclose(power, 1.0, atol=1e-6)
    assert len(plan_chunks(n, sr, chunk_s=30.0, context_s=2.0)) == 1


@pytest.fixture(scope="module")
def long_signal():
    """12 s: music, then a sine glide over the chunk boundaries (seams would click on it)."""
    audio, sr = sf.read(D01, dtype="float32", always_2d=True)
    sweep = sine(220, sr, 2.0, channels=2, amp=0.3).T
    return np.ascontiguousarray(np.concatenate([audio[: 10 * sr].T, sweep], axis=1)), sr


@pytest.mark.parametrize("inversion", INVERSIONS)
def test_chunked_processing_has_no_seams(ckpt, long_signal, inversion):
    """Around each chunk boundary the sample-to-sample jumps are no larger than those of the
    same stretch mastered in one piece (a seam would add a click there)."""
    audio, sr = long_signal
    chunked, info = Masterer(ckpt, inversion, iterations=8, chunk_s=3.0, context_s=0.5).master_audio(audio, sr)
    whole, _ = Masterer(ckpt, inversion, iterations=8).master_audio(audio, sr)
    chunks = plan_chunks(audio.shape[1], sr, 3.0, 0.5)
    assert info["chunks"] == len(chunks) >= 4 and chunked.shape == audio.shape and np.isfinite(chunked).all()
    step_chunked = np.abs(np.diff(chunked, axis=1)).max(axis=0)
    step_whole = np.abs(np.diff(whole, axis=1)).max(axis=0)
    # Random-phase Griffin-Lim draws a different phase per chunk: the two renderings differ in
    # detail, so its jumps only have to stay of the same order.
    tolerance = 1.6 if inversion == "griffinlim" else 1.25
    for c in chunks[1:]:
        a, b = c.sample_in  # the crossfade, plus 50 ms either side
        region = slice(a - sr // 20, b + sr // 20)
        assert step_chunked[region].max() <= tolerance * step_whole[region].max() + 1e-4, (c, inversion)


def test_chunked_mask_matches_one_piece(ckpt, long_signal):
    audio, sr = long_signal
    whole, _ = Masterer(ckpt, "mask").master_audio(audio, sr)
    chunked, _ = Masterer(ckpt, "mask", chunk_s=3.0, context_s=0.5).master_audio(audio, sr)
    assert np.abs(whole - chunked).max() < 1e-3 * np.abs(whole).max() + 1e-4


@pytest.mark.parametrize(("mode", "inversion", "says"), [
    ("restore", "chain", "'restore'"), ("params", "mask", "'params'"), ("params", "griffinlim", "'params'"),
])
def test_mode_and_inversion_mismatch_fails_at_start(tmp_path, mode, inversion, says):
    path = make_checkpoint(tmp_path / mode, mode)
    with pytest.raises(MasteringError, match=says):
        Masterer(path, inversion)


def test_unknown_inversion_and_bad_chunking(ckpt):
    with pytest.raises(MasteringError, match="inversion must be one of"):
        Masterer(ckpt, "magic")
    with pytest.raises(MasteringError, match="chunk_s"):
        Masterer(ckpt, "mask", chunk_s=1.0, context_s=1.0)


def test_output_names():
    assert output_rel_path("a/b.mp3") == "a/b.flac"
    assert output_rel_path("a/b.WAV") == "a/b.WAV"
    assert output_rel_path("x.aiff") == "x.flac"
    assert plan_output_names(["s.mp3", "s.flac", "t.mp3"])[0] == {"s.flac": "s.flac", "s.mp3": "s.mp3.flac", "t.mp3": "t.flac"}
    with pytest.raises(ValueError):
        output_rel_path("notes.txt")


def _checkpoint_with_errors(folder, errors: dict[str, float]) -> str:
    """A tiny cascade whose recorded validation errors (MAE / predict-the-mean MAE) are ``errors``."""
    config = load_config(overrides=TINY)
    torch.manual_seed(0)
    metrics = {}
    for p in PARAMS:
        metrics[f"val/mae/{p.name}"] = errors.get(p.name, 1.0)
        metrics[f"val/mae_baseline/{p.name}"] = 1.0
    save_checkpoint(folder, Cascade.from_config(config), config, extra={"metrics": json.dumps(metrics)})
    return str(folder)


def _si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    ref, est = ref.reshape(-1).astype(np.float64), est.reshape(-1).astype(np.float64)
    target = (est @ ref) / (ref @ ref) * ref
    return float(10 * np.log10((target @ target) / ((est - target) @ (est - target))))


def test_chain_applies_only_forecasts_better_than_the_mean_and_measures_the_echo(tmp_path, music):
    ckpt = _checkpoint_with_errors(tmp_path / "m", {"reverb_wet": 0.5, "eq_low_gain_db": 0.79, "comp_ratio": 0.95})
    masterer = Masterer(ckpt, "chain")
    policy = masterer.chain_policy()
    assert policy["reverb_wet"] == policy["eq_low_gain_db"] == "forecast"  # error <= 0.8 of the mean's
    assert policy["comp_ratio"] == policy["output_gain_db"] == policy["eq_high_gain_db"] == "neutral"
    assert policy["comp_threshold_db"] == "forecast"  # no neutral value: harmless once the ratio is 1
    assert policy["echo_gain"] == policy["echo_delay_s"] == "estimate"
    status = master_file(masterer, str(D01), str(tmp_path / "out"), "d01.flac")
    assert status["status"] == "ok", status["reason"]
    params = json.loads((tmp_path / "out" / "parameters" / "d01.flac.json").read_text())["params"]
    assert params["comp_ratio"]["applied"] == pytest.approx(1.0) and params["comp_ratio"]["source"] == "neutral"
    assert params["output_gain_db"]["applied"] == pytest.approx(0.0, abs=1e-4)
    assert params["eq_high_gain_db"]["max"] == pytest.approx(0.0, abs=1e-4)
    assert params["echo_gain"]["applied"] == 0.0 and params["echo_gain"]["source"] == "estimate"  # own stage
    assert status["echo_removed"] is False and status["echo_gain"] < 0.15  # clean music: left alone
    # Every forecast applied: nothing neutral.
    assert "neutral" not in Masterer(ckpt, "chain", max_forecast_error=float("inf")).chain_policy().values()


def test_a_measured_echo_is_undone_before_every_inversion(tmp_path, music):
    from automaster.effects.echo import echo

    clean, sr = music  # 3 s: echoes up to 0.52 s fit four times
    ckpt = _checkpoint_with_errors(tmp_path / "m", {})  # no forecast better than the mean
    x = torch.from_numpy(clean).double()[None]
    damaged = echo(x, sr, torch.tensor([0.2345]).double(), torch.tensor([0.35]).double())[0].float().numpy()
    before = _si_sdr(clean, damaged)
    for inversion in ("chain", "mask"):
        repaired, info = Masterer(ckpt, inversion).master_audio(damaged, sr)
        assert info["echo_removed"] and info["echo_delay_s"] == pytest.approx(0.2345, abs=0.5e-3)
        assert info["echo_gain"] == pytest.approx(0.35, abs=0.07)  # 3 s of music: a rougher estimate
        assert info["lufs_before"] is not None and info["peak_before_dbfs"] == pytest.approx(
            20 * np.log10(np.abs(damaged).max()), abs=1e-3)  # levels of the input as given  # fmt: skip
        if inversion == "chain":  # the untrained mask's gains change the audio too
            assert _si_sdr(clean, repaired) > before + 10, (before, _si_sdr(clean, repaired))
    untouched, info = Masterer(ckpt, "chain", echo_removal=False).master_audio(damaged, sr)
    assert not info["echo_removed"] and info["echo_gain"] is None
    assert _si_sdr(damaged, untouched) > 40  # every correction neutral: the identity
