"""Compression undone: waveform features, the project's draw, the effective-threshold inverse, the fit.

The exact inverse with the compressor's own settings is tested in
``tests/effects/test_compressor.py`` (``test_inverse_on_real_music_is_near_exact``); here the
inverse runs with the *effective* settings the estimator predicts (threshold relative to the
compressed clip, no makeup) and must undo the damage up to one gain.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from automaster.audio import read_audio
from automaster.degrade import clip_rms_db, degrade_clip
from automaster.dsp.metrics import si_sdr
from automaster.effects.compressor import compressor_inverse
from automaster.restoration.compression import (
    KINDS, TARGETS, CompressionModel, compress_clip, draw_kind, make_example,
)
from automaster.restoration.features import N_FEATURES, waveform_features

DATA = Path(__file__).resolve().parents[1] / "data" / "music"
MUSIC = sorted(DATA.glob("*.flac"))
RATE = 44100


@pytest.fixture(scope="module")
def music() -> list[np.ndarray]:
    return [read_audio(p, sample_rate=RATE)[0] for p in MUSIC]


def test_features_shape_finite_and_free_of_scale(music):
    for audio in music:
        f = waveform_features(audio, RATE)
        assert f.shape == (N_FEATURES,) and f.dtype == np.float32
        assert np.isfinite(f).all()
        np.testing.assert_allclose(waveform_features(audio * 0.05, RATE), f, atol=1e-3)
    # A stereo clip with two equal channels reads as its mono channel (channel-linked power).
    mono = music[0][:1]
    np.testing.assert_allclose(waveform_features(np.vstack([mono, mono]), RATE), waveform_features(mono, RATE), atol=1e-4)


def test_features_refuse_bad_audio():
    with pytest.raises(ValueError, match="at least"):
        waveform_features(np.zeros(1000, np.float32), RATE)
    with pytest.raises(ValueError, match="expected"):
        waveform_features(np.zeros((1, 2, RATE), np.float32), RATE)


def test_fast_compression_is_the_projects_draw(music):
    clean = music[1][:1, : 4 * RATE]
    fast, settings = compress_clip(clean, RATE, 3, "song:0")
    full = degrade_clip(clean, RATE, 3, "song:0", effects=("compressor",))
    assert settings["ratio"] == pytest.approx(float(full.params["comp_ratio"]))
    assert settings["output_gain_db"] == pytest.approx(float(full.params["output_gain_db"]), abs=1e-3)
    assert si_sdr(fast, full.audio[0].numpy()) > 60


def test_effective_settings_undo_the_damage(music):
    clean = music[1][:, : 5 * RATE]
    ex = make_example(clean, RATE, 7, "song:1", "compressor")
    t = dict(zip(TARGETS, ex.targets))
    effective = {  # what the estimator predicts, from the true settings: no makeup, threshold re-referenced
        "threshold_db": t["threshold_rel_db"] + clip_rms_db(ex.audio), "ratio": np.exp(t["log_ratio"]),
        "knee_db": t["knee_db"], "attack_ms": np.exp(t["log_attack_ms"]), "release_ms": np.exp(t["log_release_ms"]),
        "makeup_db": 0.0,
    }
    undone = compressor_inverse(torch.from_numpy(ex.audio)[None], RATE, **effective)[0].numpy()
    assert si_sdr(ex.audio, clean) < 30  # the damage is real
    assert si_sdr(undone, clean) > 40


def test_examples_are_deterministic_and_kinds_follow_the_weights(music):
    clean = music[0][:1, : 3 * RATE]
    a, b = (make_example(clean, RATE, 5, "t:2") for _ in range(2))
    assert a.kind == b.kind
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.features, b.features)
    kinds = [draw_kind(0, str(i)) for i in range(2000)]
    share = kinds.count("compressor") / len(kinds)
    assert abs(share - KINDS["compressor"] / sum(KINDS.values())) < 0.04


def _examples(music: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feats, labels, targets = [], [], []
    for i, audio in enumerate(music):
        for k in range(8):
            start = k * RATE // 2
            for kind in ("compressor", "clean"):
                ex = make_example(audio[:1, start: start + 3 * RATE], RATE, seed, f"{i}:{k}", kind)
                feats.append(ex.features)
                labels.append(kind == "compressor")
                targets.append(ex.targets)
    return np.array(feats), np.array(labels), np.array(targets)


def test_fit_is_deterministic_and_round_trips(music, tmp_path):
    feats, labels, targets = _examples(music, seed=1)
    a = CompressionModel.fit(feats, labels, targets)
    b = CompressionModel.fit(feats, labels, targets)
    np.testing.assert_array_equal(a.detector, b.detector)
    np.testing.assert_array_equal(a.estimator, b.estimator)
    # The fit separates its own training examples (a real signal, not noise).
    assert ((a.probability(feats) >= 0.5) == labels).mean() > 0.9
    a.save(str(tmp_path))
    c = CompressionModel.load(str(tmp_path))
    np.testing.assert_allclose(c.estimate(feats), a.estimate(feats), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        CompressionModel.fit(feats[:, :10], labels, targets)


def test_undo_returns_the_input_itself_when_the_detector_does_not_fire(music):
    feats, labels, targets = _examples(music, seed=2)
    model = CompressionModel.fit(feats, labels, targets)
    model.decision = 1.1  # a probability never reaches it
    audio = music[0]
    out, report = model.undo(audio, RATE)
    assert out is audio and not report["fired"]
    model.decision = -0.1  # always fires; the estimate is set to a clear compression 6 dB under the RMS
    model.estimator[:] = 0.0
    model.estimator[-1] = [-6.0, np.log(4.0), 6.0, np.log(10.0), np.log(100.0)]
    out, report = model.undo(audio, RATE)
    assert report["fired"] and report["settings"]["ratio"] == pytest.approx(4.0)
    assert report["settings"]["threshold_db"] == pytest.approx(clip_rms_db(audio) - 6.0, abs=1e-4)
    assert out.shape == audio.shape and si_sdr(out, audio) < 20  # the expander acted
    assert clip_rms_db(out) == pytest.approx(clip_rms_db(audio), abs=1e-3)  # at the input's level
