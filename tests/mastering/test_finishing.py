"""The stages after restoration: presets, overrides, amount, reference and the ceiling, on real music."""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from automaster.audio import read_audio
from automaster.dsp.loudness import true_peak_dbtp
from automaster.dsp.tone import tone_error_db, tone_profile
from automaster.mastering.finishing import TRUE_PEAK_MARGIN_DB, FinishSettings, finish, levels_info
from automaster.mastering.presets import PRESETS, resolve_levels
from tests.conftest import DATA

MUSIC = DATA / "music"
FMA = DATA / "fma" / "fma_small" / "000"


def _clip(path, seconds: float = 6.0) -> tuple[np.ndarray, int]:
    audio, sr = read_audio(str(path))
    return audio[:, : int(seconds * sr)], sr


@pytest.fixture(scope="module")
def materials(tmp_path_factory) -> dict[str, tuple[np.ndarray, int]]:
    """Mono, stereo, 48 kHz and 24-bit real music."""
    tmp = tmp_path_factory.mktemp("materials")
    stereo, sr = _clip(MUSIC / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac")
    pcm24 = tmp / "brahms24.wav"
    brahms, sr_b = _clip(MUSIC / "d01_librosa_brahms_hungarian_dance_5.flac")
    sf.write(pcm24, brahms.T, sr_b, subtype="PCM_24")
    out = {"stereo": (stereo, sr), "mono": _clip(FMA / "000005.mp3"), "48k": _clip(FMA / "000010.mp3"),
           "24bit": read_audio(str(pcm24))}
    assert out["mono"][0].shape[0] == 1 and out["48k"][1] == 48000 and sf.info(pcm24).subtype == "PCM_24"
    return out


def _lufs(audio: np.ndarray, sr: int) -> float:
    return pyloudnorm.Meter(sr).integrated_loudness(audio.T.astype(np.float64))


@pytest.mark.parametrize("material", ["mono", "stereo", "48k", "24bit"])
@pytest.mark.parametrize("preset", [p for p in PRESETS if PRESETS[p].target_lufs is not None])
def test_preset_hits_loudness_under_its_ceiling(materials, material, preset):
    audio, sr = materials[material]
    out, report = finish(audio, audio, sr, FinishSettings(preset=preset))
    p = PRESETS[preset]
    assert out.shape == audio.shape and out.dtype == np.float32
    assert abs(_lufs(out, sr) - p.target_lufs) <= 0.3
    assert true_peak_dbtp(out, sr) <= p.ceiling_dbtp
    assert report["target_lufs"] == p.target_lufs


@pytest.mark.parametrize("material", ["mono", "stereo", "48k", "24bit"])
def test_default_never_exceeds_minus_one_dbtp(materials, material):
    audio, sr = materials[material]
    hot = audio * np.float32(10 ** (12 / 20) / np.abs(audio).max())  # +12 dB over full scale
    out, report = finish(hot, hot, sr, FinishSettings())
    assert true_peak_dbtp(out, sr) <= -1.0
    assert report["limiter_max_reduction_db"] > 0
    assert [s["stage"] for s in report["stages"]] == ["restore", "reference", "amount", "loudness", "limiter", "ceiling"]


def test_restore_keeps_the_level_unless_the_model_gives_one(materials):
    audio, sr = materials["stereo"]
    quiet = audio * np.float32(0.25)
    kept, _ = finish(quiet, quiet, sr, FinishSettings())
    assert _lufs(kept, sr) == pytest.approx(_lufs(quiet, sr), abs=0.01)
    raised, report = finish(quiet, quiet, sr, FinishSettings(), level_gain_db=6.0)
    assert _lufs(raised, sr) == pytest.approx(_lufs(quiet, sr) + 6.0, abs=0.3)
    assert "model" in report["stages"][3]["note"]


def test_a_zero_level_gain_is_bit_identical_to_none(materials):
    audio, sr = materials["stereo"]
    hot = audio * np.float32(10 ** (6 / 20) / np.abs(audio).max())  # the limiter works, a target would be re-aimed
    kept, _ = finish(hot, hot, sr, FinishSettings())
    zero, report = finish(hot, hot, sr, FinishSettings(), level_gain_db=0.0)
    assert np.array_equal(zero, kept)
    assert "limiter cuts at most 1.0 dB" in report["stages"][3]["note"]  # turned down, not limited hard
    unbounded = FinishSettings(max_limiting_db=None)
    kept, _ = finish(hot, hot, sr, unbounded)
    zero, report = finish(hot, hot, sr, unbounded, level_gain_db=0.0)
    assert np.array_equal(zero, kept)
    assert report["target_lufs"] is None and "level kept" in report["stages"][3]["note"]
    muted, _ = finish(hot, hot, sr, FinishSettings(amount=0.0), level_gain_db=6.0)  # amount 0 scales it to 0 dB
    assert np.array_equal(muted, finish(hot, hot, sr, FinishSettings(amount=0.0))[0])


def test_amount_zero_preset_none_returns_the_input(materials):
    audio, sr = materials["stereo"]
    restored = audio[:, ::-1].copy()  # anything else
    out, _ = finish(audio, restored, sr, FinishSettings(preset="none", amount=0.0))
    assert np.array_equal(out, audio)


def test_amount_blends_before_the_loudness_stage(materials):
    audio, sr = materials["stereo"]
    restored = audio * np.float32(0.5)
    out, _ = finish(audio, restored, sr, FinishSettings(preset="none", amount=0.5))
    np.testing.assert_allclose(out, 0.75 * audio, atol=1e-6)


def test_overrides_beat_the_preset(materials):
    audio, sr = materials["stereo"]
    out, report = finish(audio, audio, sr, FinishSettings(preset="streaming", target_lufs=-12.0, true_peak_dbtp=-3.0))
    assert abs(_lufs(out, sr) + 12.0) <= 0.3 and true_peak_dbtp(out, sr) <= -3.0
    assert report["ceiling_dbtp"] == -3.0


def test_reference_sets_loudness_and_lowers_tone_error(materials):
    audio, sr = materials["24bit"]
    ref_audio, ref_sr = materials["stereo"]
    ref = tone_profile(ref_audio, ref_sr)
    out, report = finish(audio, audio, sr, FinishSettings(reference=ref))
    assert abs(_lufs(out, sr) - ref.lufs) <= 0.3
    assert true_peak_dbtp(out, sr) <= -1.0
    # These two differ by up to 20 dB in places: the default +-6 dB EQ closes over a third of the
    # tone error, a +-12 dB one over half.
    error = tone_error_db(tone_profile(audio, sr), ref)
    assert tone_error_db(tone_profile(out, sr), ref) < 0.7 * error
    assert report["tone"]["max_eq_db"] == 6.0 and max(map(abs, report["tone"]["eq_mid_db"])) <= 6.0
    wide, report = finish(audio, audio, sr, FinishSettings(reference=ref, max_eq_db=12.0))
    assert tone_error_db(tone_profile(wide, sr), ref) < 0.5 * error and report["tone"]["max_eq_db"] == 12.0
    named, _ = finish(audio, audio, sr, FinishSettings(preset="apple", reference=ref))  # a named preset wins
    assert abs(_lufs(named, sr) + 16.0) <= 0.3


@pytest.mark.parametrize("preset", list(PRESETS))
def test_silence_stays_silence(preset):
    silence = np.zeros((2, 44100), np.float32)
    out, report = finish(silence, silence, 44100, FinishSettings(preset=preset))
    assert not np.any(out)
    assert report["loudness_gain_db"] == 0.0


def test_a_gain_beyond_the_limit_is_refused():
    rng = np.random.default_rng(0)
    hiss = (3e-3 * rng.standard_normal((2, 44100 * 3))).astype(np.float32)  # about -45 LUFS: club needs > +24 dB
    out, report = finish(hiss, hiss, 44100, FinishSettings(preset="club"))
    loud = next(s for s in report["stages"] if s["stage"] == "loudness")
    assert loud["note"].startswith("refused") and not loud["applied"]
    assert np.array_equal(out, hiss)


def test_user_mistakes_are_named():
    with pytest.raises(ValueError, match="--amount"):
        FinishSettings(amount=1.5)
    with pytest.raises(ValueError, match="--preset"):
        FinishSettings(preset="loud")
    assert resolve_levels(None).ceiling_dbtp == -1.0 and math.isclose(resolve_levels("club").target_lufs, -9.0)


def test_levels_info_summarises_the_run(materials):
    from automaster.mastering.finishing import levels_info

    audio, sr = materials["stereo"]
    out, report = finish(audio, audio, sr, FinishSettings(preset="streaming", amount=0.5))
    info = levels_info(audio, sr, report)
    assert info["lufs_after"] == pytest.approx(_lufs(out, sr), abs=0.01)
    assert info["lufs_before"] == pytest.approx(_lufs(audio, sr), abs=0.01)
    assert info["true_peak_after_dbtp"] <= -1.0 and info["target_lufs"] == -14.0
    assert info["applied"].startswith("restoration, amount 0.50, to -14.0 LUFS +") and info["loudness_note"] == ""
    rng = np.random.default_rng(0)
    hiss = (3e-3 * rng.standard_normal((2, 44100 * 3))).astype(np.float32)
    _, report = finish(hiss, hiss, 44100, FinishSettings(preset="club"))
    assert levels_info(hiss, 44100, report)["loudness_note"].startswith("refused")


@pytest.mark.parametrize("gain_db", [3.0, 6.0, 12.0])
@pytest.mark.parametrize("bound_db", [0.0, 1.0])
def test_the_level_gain_never_asks_the_limiter_for_more_than_its_bound(materials, gain_db, bound_db):
    """A model's level gain is capped where the -1 dBTP limiter would cut more than the bound."""
    audio, sr = materials["stereo"]
    peaky = audio * np.float32(10 ** (-3 / 20) / np.abs(audio).max())  # about -3 dBTP: +2 dB reaches the ceiling
    out, report = finish(peaky, peaky, sr, FinishSettings(max_limiting_db=bound_db), level_gain_db=gain_db)
    assert report["limiter_max_reduction_db"] <= bound_db + 0.1
    assert true_peak_dbtp(out, sr) <= -1.0
    headroom = -1.0 - TRUE_PEAK_MARGIN_DB + bound_db - true_peak_dbtp(peaky, sr)  # the limiter aims under the ceiling
    assert report["loudness_gain_db"] == pytest.approx(min(gain_db, headroom), abs=0.05)
    assert "so that the limiter cuts at most" in report["stages"][3]["note"]


def test_a_level_gain_within_the_bound_is_applied_whole(materials):
    audio, sr = materials["stereo"]
    quiet = audio * np.float32(10 ** (-12 / 20) / np.abs(audio).max())
    out, report = finish(quiet, quiet, sr, FinishSettings(max_limiting_db=1.0), level_gain_db=6.0)
    assert report["loudness_gain_db"] == pytest.approx(6.0, abs=0.01) and "limiter cuts" not in report["stages"][3]["note"]
    assert _lufs(out, sr) == pytest.approx(_lufs(quiet, sr) + 6.0, abs=0.05)
    unbounded, report = finish(quiet, quiet, sr, FinishSettings(max_limiting_db=None), level_gain_db=6.0)
    np.testing.assert_allclose(out, unbounded, atol=1e-6)  # nothing for the limiter to do either way


def test_a_negative_bound_is_refused():
    with pytest.raises(ValueError, match="max_limiting_db must be >= 0"):
        FinishSettings(max_limiting_db=-1.0)


def test_a_hot_input_is_turned_down_rather_than_limited_beyond_the_bound(materials):
    """The restore preset without a model gain: a static gain down takes what the limiter would
    have cut beyond the bound (no distortion); the ceiling still holds."""
    audio, sr = materials["stereo"]
    hot = audio * np.float32(10 ** (4 / 20) / np.abs(audio).max())
    out, report = finish(hot, hot, sr, FinishSettings(max_limiting_db=1.0))
    aim = -1.0 - TRUE_PEAK_MARGIN_DB  # the limiter acts this far under the ceiling
    assert report["loudness_gain_db"] == pytest.approx(aim + 1.0 - true_peak_dbtp(hot, sr), abs=0.01)
    assert report["loudness_gain_db"] < -3.0
    assert report["limiter_max_reduction_db"] <= 1.1 and true_peak_dbtp(out, sr) <= -1.0


def test_audio_under_the_ceiling_without_a_level_gain_is_left_alone(materials):
    """The bound acts only where the limiter would: a clip under -1 dBTP passes unchanged."""
    audio, sr = materials["stereo"]
    calm = audio * np.float32(10 ** (-3 / 20) / np.abs(audio).max())
    out, report = finish(calm, calm, sr, FinishSettings(max_limiting_db=0.0))
    np.testing.assert_allclose(out, calm, atol=1e-6)
    assert report["loudness_gain_db"] == 0.0 and report["limiter_max_reduction_db"] == 0.0


def test_without_a_level_model_a_turned_down_hot_input_is_not_called_the_level_models(materials):
    """The restore preset without a level model turns a hot input down to the limiting bound:
    the table and the report say so, not 'level model'."""
    audio, sr = materials["stereo"]
    hot = audio * np.float32(10 ** (4 / 20) / np.abs(audio).max())
    _, report = finish(hot, hot, sr, FinishSettings(max_limiting_db=1.0))
    assert report["loudness_from"] == "limiting bound"
    assert "level model" not in report["applied"] and ", level -" in report["applied"]
    _, with_model = finish(hot, hot, sr, FinishSettings(max_limiting_db=1.0), level_gain_db=2.0)
    assert with_model["loudness_from"] == "level model" and "level model" in with_model["applied"]


def test_a_clip_shorter_than_one_loudness_block_keeps_its_level(materials):
    """BS.1770 measures 400 ms blocks: one frame 'measured' -14 LUFS and was raised 12.6 dB. A
    shorter clip keeps its level (the ceiling still holds) and the note says why."""
    audio, sr = materials["stereo"]
    tiny = np.ascontiguousarray(audio[:, : sr // 10] * np.float32(0.05))
    out, report = finish(tiny, tiny, sr, FinishSettings(preset="streaming"))
    assert report["target_lufs"] is None and report["loudness_gain_db"] == 0.0
    assert levels_info(tiny, sr, report)["loudness_note"].startswith("too short")
    assert np.array_equal(out, tiny)
