"""Differentiable effects over ``(B, C, T)`` audio, each with its inverse, and the chain.

Every effect is ``effect(x, sample_rate, <params>) -> y`` and ``effect_inverse(y, sample_rate,
<same params>) -> x_hat``; the ParamSpec table (``params``) names, bounds and normalises the
parameters the chain (``apply_chain`` / ``invert_chain``) takes as a dict.
"""

from automaster.effects.chain import apply_chain, invert_chain
from automaster.effects.compressor import (
    compressor,
    compressor_curve_db,
    compressor_gain_db,
    compressor_inverse,
    compressor_inverse_gain,
    expander_power_gain,
    expander_gain_db,
    one_pole_ballistics,
)
from automaster.effects.echo import echo, echo_inverse, echo_transfer
from automaster.effects.eq import eq, eq_inverse, eq_inverse_stft, eq_response, eq_stft
from automaster.effects.gain import gain, gain_inverse
from automaster.effects.params import PARAM_NAMES, PARAMS, ParamSpec, neutral_params
from automaster.effects.reverb import (
    reverb,
    reverb_impulse_response,
    reverb_inverse,
    reverb_inverse_mask,
    reverb_inverse_stft,
    reverb_noise,
)

__all__ = [
    "PARAMS", "PARAM_NAMES", "ParamSpec", "neutral_params",
    "apply_chain", "invert_chain",
    "compressor", "compressor_inverse", "compressor_inverse_gain", "compressor_curve_db",
    "compressor_gain_db", "expander_gain_db", "expander_power_gain", "one_pole_ballistics",
    "echo", "echo_inverse", "echo_transfer",
    "eq", "eq_inverse", "eq_stft", "eq_inverse_stft", "eq_response",
    "gain", "gain_inverse",
    "reverb", "reverb_inverse", "reverb_inverse_stft", "reverb_inverse_mask", "reverb_impulse_response",
    "reverb_noise",
]
