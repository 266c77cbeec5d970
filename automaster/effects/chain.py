"""The demastering chain EQ -> compressor -> reverb -> echo -> gain, and its inverse.

``params`` is a dict keyed by the ParamSpec table's names (``automaster.effects.params``):
per-frame trajectories ``(B, F)`` at any ``F``, per-clip values ``(B,)``. Audio is ``(B, C, T)``
at any sample rate.

Speed: reverb, echo and gain are linear and time-invariant, so the forward applies them as one
FFT convolution (one rfft of the audio, one of the impulse response, one irfft); the inverse
divides out echo and gain in one FFT pair, then does reverb suppression, the compressor's
expander and the EQ inverse from a single STFT of the result. Without autograd on the CPU the
echo and gain are undone in the time domain instead (:func:`automaster.effects.echo.echo_inverse_time`)
and the rest runs on frame-major numpy spectra (:func:`automaster.dsp.stft.stft_rows`): the reverb
suppression, the EQ inverse and the compressor detector's power ratio are one numba pass over
the spectrum, vectorised over bins (same formulas as the torch path, which autograd and other
devices use).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from automaster.dsp.stft import HOP_LENGTH, N_FFT, istft, istft_rows, stft, stft_rows
from automaster.effects._checks import (
    check_audio, check_sample_rate, clip_param, fast_fft_size, irfft, needs_grad, rfft, stft_frames,
    upsample_linear,
)
from automaster.effects.compressor import compressor, expander_power_gain, frame_mean_square
from automaster.effects.echo import (
    FRACTIONAL_HALF_TAPS, delay_padding, echo_inverse_time, echo_transfer, inverse_padding,
)
from automaster.effects.eq import eq_response
from automaster.effects.gain import db_to_amplitude
from automaster.effects.params import PARAM_NAMES
from automaster.effects.reverb import (
    POWER_EPS, SUPPRESSION_FLOOR, Generators, ir_length, reverb_inverse_mask, reverb_transfer,
    suppression_constants,
)

# Table name -> keyword argument of each effect function.
EQ_ARGS = {
    "eq_low_gain_db": "low_gain_db", "eq_low_fc_hz": "low_fc_hz", "eq_low_q": "low_q",
    "eq_high_gain_db": "high_gain_db", "eq_high_fc_hz": "high_fc_hz", "eq_high_q": "high_q",
}
COMPRESSOR_ARGS = {
    "comp_threshold_db": "threshold_db", "comp_ratio": "ratio", "comp_knee_db": "knee_db",
    "comp_attack_ms": "attack_ms", "comp_release_ms": "release_ms", "comp_makeup_db": "makeup_db",
}


def _kwargs(params: dict[str, torch.Tensor], names: dict[str, str]) -> dict[str, torch.Tensor]:
    return {arg: params[name] for name, arg in names.items()}


def _check_params(params: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Check the keys; per-clip scalars as ``(B,)`` tensors on ``x``'s device and dtype."""
    missing = [n for n in PARAM_NAMES if n not in params]
    unknown = sorted(set(params) - set(PARAM_NAMES))
    if missing or unknown:
        raise ValueError(f"chain parameters: missing {missing}, unknown {unknown}")
    out = dict(params)
    for name in ("reverb_rt60_s", "reverb_wet", "echo_delay_s", "echo_gain", "output_gain_db"):
        out[name] = clip_param(name, params[name], x.shape[0], x)
    return out


def _lti_transfer(
    sample_rate: float, p: dict[str, torch.Tensor], channels: int, n_fft: int, generator: Generators
) -> torch.Tensor:
    """Reverb x echo x gain frequency response ``(B, C, n_fft // 2 + 1)``."""
    rev = reverb_transfer(sample_rate, p["reverb_rt60_s"], p["reverb_wet"], channels, n_fft, generator)
    tap = echo_transfer(sample_rate, p["echo_delay_s"], p["echo_gain"], n_fft)
    return rev * (tap * db_to_amplitude(p["output_gain_db"]).view(-1, 1, 1))


def _masked(spec: torch.Tensor, mask: torch.Tensor, in_place: bool) -> torch.Tensor:
    """``spec * mask``; in place when allowed and no gradient is needed (large spectra are slow to
    allocate: fresh pages cost more than the multiply)."""
    if in_place and not needs_grad(spec, mask):
        return spec.mul_(mask)
    return spec * mask


def apply_chain(
    x: torch.Tensor,
    sample_rate: float,
    params: dict[str, torch.Tensor],
    generator: Generators = None,
    stft_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """Demaster ``x`` ``(B, C, T)`` -> ``(B, C, T)``.

    Args:
        params: the table's parameters (see module doc).
        generator: seeds the reverb noise; one generator, or one per batch item.
        stft_x: ``stft(x)`` ``(B, C, n_fft // 2 + 1, 1 + T // 512)`` if the caller already has it.
    """
    check_audio(x)
    sample_rate = check_sample_rate(sample_rate)
    p = _check_params(params, x)
    batch, channels, length = x.shape
    own_spec = stft_x is None
    if own_spec:
        stft_x = stft(x)
    elif stft_x.shape != (batch, channels, N_FFT // 2 + 1, stft_frames(length)) or not stft_x.is_complex():
        raise ValueError(
            f"expected stft_x of shape {(batch, channels, N_FFT // 2 + 1, stft_frames(length))} "
            f"(complex stft of x), got {tuple(stft_x.shape)}"
        )
    response = eq_response(sample_rate, stft_x.shape[-2], stft_x.shape[-1], **_kwargs(p, EQ_ARGS), batch=batch)
    x = istft(_masked(stft_x, response.unsqueeze(1), in_place=own_spec), length)
    x = compressor(x, sample_rate, **_kwargs(p, COMPRESSOR_ARGS))
    tail = ir_length(sample_rate, p["reverb_rt60_s"]) + delay_padding(sample_rate, p["echo_delay_s"])
    n_fft = fast_fft_size(length + tail)  # linear, not circular, convolution
    spec = rfft(x, n=n_fft) * _lti_transfer(sample_rate, p, channels, n_fft, generator)
    return irfft(spec, n=n_fft)[..., :length]


def invert_chain(y: torch.Tensor, sample_rate: float, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Repair ``y`` ``(B, C, T)`` -> ``(B, C, T)`` with each effect's inverse, in reverse order.

    Gain and echo are divided out together (one FFT pair). One STFT then serves the reverb
    suppression and the EQ inverse (one iSTFT). The compressor's expander comes last instead of
    before the EQ inverse; its detector is fed what it would have seen, the power of the
    dereverberated audio *before* the EQ inverse, which is the EQ-inverted power times a
    per-frame ratio known from the STFT (Parseval). Exact when the compressor's gain varies
    slowly against the EQ's (few ms) impulse response; it saves an STFT/iSTFT pair.
    """
    check_audio(y)
    sample_rate = check_sample_rate(sample_rate)
    p = _check_params(params, y)
    batch, channels, length = y.shape
    padding = inverse_padding(sample_rate, p["echo_delay_s"], p["echo_gain"])  # also checks the gains
    fast = y.device.type == "cpu" and not needs_grad(y, *p.values())
    if fast and bool((p["echo_delay_s"] * sample_rate >= 2 * FRACTIONAL_HALF_TAPS).all()):
        # Echo and gain undone in the time domain (an IIR; a fraction of the two long FFTs).
        scale = 1.0 / db_to_amplitude(p["output_gain_db"])
        z = np.stack([
            echo_inverse_time(y[b].detach().numpy(), sample_rate, float(p["echo_delay_s"][b]),
                              float(p["echo_gain"][b]), float(scale[b]))
            for b in range(batch)
        ])
        return _invert_rest_rows(torch.from_numpy(z), sample_rate, p)
    n_fft = fast_fft_size(length + padding)
    tap = echo_transfer(sample_rate, p["echo_delay_s"], p["echo_gain"], n_fft)
    tap = tap * db_to_amplitude(p["output_gain_db"]).view(-1, 1, 1)
    z = irfft(rfft(y, n=n_fft) / tap, n=n_fft)[..., :length]
    if fast:
        return _invert_rest_rows(z, sample_rate, p)

    spec = stft(z)  # (B, C, n_bins, F)
    power = spec.real.square() + spec.imag.square()
    dry = reverb_inverse_mask(power, sample_rate, p["reverb_rt60_s"], p["reverb_wet"])
    response = eq_response(sample_rate, spec.shape[-2], spec.shape[-1], **_kwargs(p, EQ_ARGS), batch=batch)
    response = response.unsqueeze(1)  # (B, 1, n_bins, F)
    # Without autograd, work in place on these ~5M-bin-per-channel arrays (fresh memory costs
    # more than the arithmetic); the formulas are the same.
    fast = not needs_grad(spec, dry, response)
    # Power the compressor's detector would see (before the EQ inverse), as a ratio per frame.
    dry_power = power.mul_(dry).mul_(dry) if fast else power * dry.square()
    before = frame_mean_square(dry_power).mean(dim=1)  # (B, F)
    flat_power = dry_power.div_(response).div_(response) if fast else dry_power / response.square()
    after = frame_mean_square(flat_power).mean(dim=1)
    ratio = upsample_linear(before / after.clamp_min(1e-20), HOP_LENGTH, length)  # (B, T)
    mask = dry.div_(response) if fast else dry / response
    flat = istft(spec.mul_(mask) if fast else spec * mask, length)  # dereverberated, EQ undone, compressed
    detector_power = flat.square().mean(dim=1) * ratio
    return flat * expander_power_gain(detector_power, sample_rate, **_kwargs(p, COMPRESSOR_ARGS)).unsqueeze(1)


@numba.njit(cache=True, fastmath=True)
def _dereverb_eq_rows(spec, response, channels, decay, share, inv_dry, floor, eps, weights):  # pragma: no cover
    """In place on frame-major spectra ``spec`` ``(B * C, F, 2 * n_bins)`` (complex as float pairs):
    multiply by the reverb suppression mask over the EQ response (given as ``1 / R``, ``(B, F, n_bins)``).

    Returns the detector powers before and after the EQ inverse, ``(B, F)`` each: the
    bin-weighted sums of the dereverberated power without and with the division by ``R^2``.
    The recursion runs over frames with one state per bin (vectorised over bins). Every scalar
    comes in the spectrum's dtype (a float64 one would promote the float32 arithmetic).
    """
    n_rows, n_frames, _ = spec.shape
    n_bins = weights.size
    batch = n_rows // channels
    before = np.zeros((batch, n_frames))
    after = np.zeros((batch, n_frames))
    state = np.empty(n_bins, spec.dtype)
    zero = floor - floor
    for r in range(n_rows):
        b = r // channels
        a = decay[b]
        keep = 1 - a
        late = share[b] * a
        scale = inv_dry[b]
        state[:] = zero
        for f in range(n_frames):
            row = spec[r, f]  # row slices: LLVM vectorises these loops, not 3-D indexing
            resp = response[b, f]
            acc_before = zero
            acc_after = zero
            for k in range(n_bins):
                re = row[2 * k]
                im = row[2 * k + 1]
                power = re * re + im * im
                mask = max(1 - late * state[k] / (power + eps), floor) * scale
                state[k] += keep * (power - state[k])
                dry_power = power * mask * mask
                inv_r = resp[k]  # the response's reciprocal
                acc_before += weights[k] * dry_power
                acc_after += weights[k] * dry_power * inv_r * inv_r
                gain = mask * inv_r
                row[2 * k] = re * gain
                row[2 * k + 1] = im * gain
            before[b, f] += acc_before
            after[b, f] += acc_after
    return before, after


def _invert_rest_rows(z: torch.Tensor, sample_rate: float, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`invert_chain` after the echo/gain division, on frame-major numpy spectra (CPU, no
    autograd): the same formulas as the torch path, in one STFT, one numba pass and one iSTFT."""
    batch, channels, length = z.shape
    x = z.detach().numpy().reshape(batch * channels, length)
    spec = stft_rows(x)  # (B * C, F, n_bins)
    real = np.float32 if spec.dtype == np.complex64 else np.float64
    n_frames, n_bins = spec.shape[1:]
    rt60, wet = p["reverb_rt60_s"], p["reverb_wet"]
    if not bool((rt60 > 0).all()):
        raise ValueError(f"expected positive rt60_s, got {rt60.detach().cpu().tolist()}")
    decay, share = suppression_constants(sample_rate, rt60, wet)
    response = eq_response(sample_rate, n_bins, n_frames, **_kwargs(p, EQ_ARGS), batch=batch, frames_first=True)
    response = response.reciprocal_()  # the kernel multiplies (a vectorised torch division here)
    # Bin weights of the frame mean square (Parseval, one-sided): constant factors cancel in the ratio.
    weights = np.full(n_bins, 2.0, real)
    weights[0] = weights[-1] = 1.0

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().numpy().astype(real)

    before, after = _dereverb_eq_rows(
        spec.view(real), np.ascontiguousarray(response.numpy(), dtype=real), channels, arr(decay), arr(share),
        arr(1.0 / (1.0 - wet)), real(SUPPRESSION_FLOOR), real(POWER_EPS), weights,
    )
    ratio = torch.from_numpy(before / np.maximum(after, 1e-20)).to(z.dtype)  # (B, F)
    ratio = upsample_linear(ratio, HOP_LENGTH, length)  # (B, T)
    flat = torch.from_numpy(istft_rows(spec, length)).view(batch, channels, length)  # dereverberated, EQ undone
    detector_power = flat.square().mean(dim=1).mul_(ratio)
    gain = expander_power_gain(detector_power, sample_rate, **_kwargs(p, COMPRESSOR_ARGS))
    return flat.mul_(gain.unsqueeze(1))
