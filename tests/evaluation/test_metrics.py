"""The evaluation's distances and forecast errors: analytic checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automaster.degrade import draw_params, make_generator
from automaster.effects.params import PARAM_NAMES, stack
from automaster.evaluation.metrics import mrstft_distance, parameter_errors

SR = 44100


def test_mrstft_is_zero_for_identical_signals_and_grows_with_noise():
    rng = np.random.default_rng(0)
    x = np.sin(2 * np.pi * 440 * np.arange(SR) / SR)[None].astype(np.float32) + 0.05 * rng.standard_normal((1, SR)).astype(np.float32)
    assert mrstft_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    distances = [mrstft_distance(x + level * noise, x) for level in (0.001, 0.01, 0.1, 1.0)]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert mrstft_distance(x[None], x[None]) == pytest.approx(0.0, abs=1e-6)  # (B, C, T) too


def test_parameter_errors_zero_for_a_perfect_forecast_and_physical_units():
    n_frames = 40
    truth = draw_params(n_frames, make_generator(0, "x"))
    truth = {k: v[0].numpy() for k, v in truth.items()}
    perfect = stack({k: torch.as_tensor(v)[None] if v.ndim else torch.as_tensor(v).reshape(1) for k, v in truth.items()}, n_frames)[0]
    errors = parameter_errors(perfect.numpy(), truth)
    assert set(errors) == set(PARAM_NAMES)
    assert max(e["abs_err"] for e in errors.values()) < 1e-3
    shifted = perfect.clone()
    shifted[PARAM_NAMES.index("eq_low_gain_db")] += 1.0 / 12.0  # +1 dB on a 12 dB range
    err = parameter_errors(shifted.numpy(), truth)["eq_low_gain_db"]
    assert err["abs_err"] == pytest.approx(1.0, abs=1e-3)
    assert err["mid_range_abs_err"] == pytest.approx(float(np.abs(truth["eq_low_gain_db"]).mean()), abs=1e-4)
