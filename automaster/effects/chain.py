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

import math

import numba
import numpy as np
import scipy.fft
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
    POWER_EPS, SUPPRESSION_FLOOR, Generators, ir_length, reverb_impulse_response, reverb_inverse_mask, reverb_noise,
    reverb_transfer, suppression_constants,
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


def _arr(t: torch.Tensor, dtype: type = np.float64) -> np.ndarray:
    """Per-clip parameters as a numpy array of ``dtype`` for the numba kernels (via float64)."""
    return t.detach().double().numpy().astype(dtype, copy=False)


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
    stft_rows_x: np.ndarray | None = None,
) -> torch.Tensor:
    """Demaster ``x`` ``(B, C, T)`` -> ``(B, C, T)``.

    On the CPU without autograd this runs :func:`_apply_chain_rows` (numpy/numba, the same
    formulas, equal up to float rounding); otherwise torch, differentiable.

    Args:
        params: the table's parameters (see module doc).
        generator: seeds the reverb noise; one generator, or one per batch item.
        stft_x: ``stft(x)`` ``(B, C, n_fft // 2 + 1, 1 + T // 512)`` if the caller already has it.
        stft_rows_x: or the same frame-major, ``stft_rows(x)`` ``(B * C, 1 + T // 512, n_fft // 2 + 1)``
            (:func:`automaster.dsp.stft.stft_rows`); not modified.
    """
    check_audio(x)
    sample_rate = check_sample_rate(sample_rate)
    p = _check_params(params, x)
    batch, channels, length = x.shape
    rows_shape = (batch * channels, stft_frames(length), N_FFT // 2 + 1)
    if stft_rows_x is not None and (stft_rows_x.shape != rows_shape or not np.iscomplexobj(stft_rows_x)):
        raise ValueError(f"expected stft_rows_x of shape {rows_shape} (complex stft_rows of x), got {stft_rows_x.shape}")
    spec_shape = (batch, channels, N_FFT // 2 + 1, stft_frames(length))
    if stft_x is not None and (stft_x.shape != spec_shape or not stft_x.is_complex()):
        raise ValueError(f"expected stft_x of shape {spec_shape} (complex stft of x), got {tuple(stft_x.shape)}")
    if x.device.type == "cpu" and not needs_grad(x, *p.values()):
        if stft_rows_x is None and stft_x is not None:
            stft_rows_x = stft_x.detach().reshape(batch * channels, *stft_x.shape[-2:]).transpose(1, 2).contiguous().numpy()
        return _apply_chain_rows(x.detach(), sample_rate, p, generator, stft_rows_x)
    if stft_x is None and stft_rows_x is not None:
        stft_x = torch.from_numpy(stft_rows_x).to(x.device).transpose(1, 2).reshape(batch, channels, rows_shape[2], rows_shape[1])
    own_spec = stft_x is None
    if own_spec:
        stft_x = stft(x)
    response = eq_response(sample_rate, stft_x.shape[-2], stft_x.shape[-1], **_kwargs(p, EQ_ARGS), batch=batch)
    x = istft(_masked(stft_x, response.unsqueeze(1), in_place=own_spec), length)
    x = compressor(x, sample_rate, **_kwargs(p, COMPRESSOR_ARGS))
    tail = ir_length(sample_rate, p["reverb_rt60_s"]) + delay_padding(sample_rate, p["echo_delay_s"])
    n_fft = fast_fft_size(length + tail)  # linear, not circular, convolution
    spec = rfft(x, n=n_fft) * _lti_transfer(sample_rate, p, channels, n_fft, generator)
    return irfft(spec, n=n_fft)[..., :length]


@numba.njit(cache=True)
def _lti_rows(spec, reverb_spec, channels, wet, echo_gain, echo_phase_step, amplitude):  # pragma: no cover
    """In place: ``spec[r, k] *= ((1 - wet) + wet H[r, k]) (1 + g exp(j phase_step k)) amplitude``,
    the reverb x echo x gain response of :func:`_lti_transfer`, for long one-sided spectra
    ``(B * C, n_bins)``. The echo's phase ramp advances by complex rotation (float64), re-anchored
    by an exact sine and cosine every 4096 bins, instead of a sine and cosine per bin."""
    n_rows, n_bins = spec.shape
    for r in range(n_rows):
        b = r // channels
        w = wet[b]
        g = echo_gain[b]
        step = echo_phase_step[b]
        rot = complex(math.cos(step), math.sin(step))
        for k0 in range(0, n_bins, 4096):
            tap = complex(math.cos(step * k0), math.sin(step * k0))
            for k in range(k0, min(k0 + 4096, n_bins)):
                response = ((1.0 - w) + w * reverb_spec[r, k]) * (1.0 + g * tap) * amplitude[b]
                spec[r, k] = spec[r, k] * response
                tap *= rot


def _apply_chain_rows(
    x: torch.Tensor, sample_rate: float, p: dict[str, torch.Tensor], generator: Generators, spec: np.ndarray | None
) -> torch.Tensor:
    """:func:`apply_chain` on the CPU without autograd: frame-major numpy spectra, the EQ mask
    applied block by block inside the iSTFT, the compressor's detector in one numba pass and the
    reverb x echo x gain response in one pass over the long spectrum (no complex temporaries).
    The reverb noise is drawn first, as on the torch path, so a generator gives the same draw."""
    batch, channels, length = x.shape
    ir = ir_length(sample_rate, p["reverb_rt60_s"])
    n_fft = fast_fft_size(length + ir + delay_padding(sample_rate, p["echo_delay_s"]))  # linear, not circular, convolution
    noise = reverb_noise(batch, channels, ir, generator)
    if spec is None:
        spec = stft_rows(x.reshape(batch * channels, length).numpy())  # (B * C, F, n_bins)
    response = eq_response(sample_rate, spec.shape[-1], spec.shape[-2], **_kwargs(p, EQ_ARGS), batch=batch, frames_first=True)
    real = np.float32 if spec.dtype == np.complex64 else np.float64
    eq_x = istft_rows(spec, length, gain=np.ascontiguousarray(response.numpy(), dtype=real))  # (B * C, T)
    x = compressor(torch.from_numpy(eq_x).view(batch, channels, length), sample_rate, **_kwargs(p, COMPRESSOR_ARGS))
    h = reverb_impulse_response(sample_rate, p["reverb_rt60_s"], noise.to(x.dtype))  # (B, C, L)
    long_spec = scipy.fft.rfft(x.reshape(batch * channels, length).numpy(), n=n_fft, axis=-1)
    reverb_spec = scipy.fft.rfft(h.reshape(batch * channels, -1).numpy(), n=n_fft, axis=-1)

    # echo_transfer's phase -2 pi f delay at f = k sample_rate / n_fft, per bin k
    phase_step = -2.0 * math.pi * sample_rate / n_fft * _arr(p["echo_delay_s"])
    _lti_rows(long_spec, reverb_spec, channels, _arr(p["reverb_wet"]), _arr(p["echo_gain"]), phase_step,
              _arr(db_to_amplitude(p["output_gain_db"])))
    y = scipy.fft.irfft(long_spec, n=n_fft, axis=-1, overwrite_x=True)[:, :length]
    return torch.from_numpy(y).view(batch, channels, length)


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

    before, after = _dereverb_eq_rows(
        spec.view(real), np.ascontiguousarray(response.numpy(), dtype=real), channels, _arr(decay, real), _arr(share, real),
        _arr(1.0 / (1.0 - wet), real), real(SUPPRESSION_FLOOR), real(POWER_EPS), weights,
    )
    ratio = torch.from_numpy(before / np.maximum(after, 1e-20)).to(z.dtype)  # (B, F)
    ratio = upsample_linear(ratio, HOP_LENGTH, length)  # (B, T)
    flat = torch.from_numpy(istft_rows(spec, length)).view(batch, channels, length)  # dereverberated, EQ undone
    detector_power = flat.square().mean(dim=1).mul_(ratio)
    gain = expander_power_gain(detector_power, sample_rate, **_kwargs(p, COMPRESSOR_ARGS))
    return flat.mul_(gain.unsqueeze(1))
