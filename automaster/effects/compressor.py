"""Feed-forward soft-knee compressor on an RMS detector, and its inverse (an expander).

Detector: the power of the audio (mean over channels of ``x^2``, so the gain is channel-linked),
averaged over a fixed RMS window (one-pole, ``RMS_TIME_S``), then smoothed by a one-pole with
attack/release ballistics (attack coefficient while the power rises above the state, release
otherwise; ``alpha = exp(-1 / (tau * sample_rate))``), in dB. The static curve is the soft knee of
Giannoulis, Massberg & Reiss (2012); its gain plus ``makeup_db`` multiplies every channel.

The RMS window is why a steady tone settles on the static curve in RMS terms: ballistics acting
on the raw ``x^2`` would ride the peaks of its ripple (fast attack, slow release) and read up to
3 dB high. The static curve is evaluated every ``GAIN_STEP`` samples and the gain interpolated
(the detector is smooth). The ballistics recursion runs in a numba kernel with an exact reverse-time backward
(:func:`one_pole_ballistics`); tensors on a GPU are copied to the CPU for it and back.

The inverse is a feedback expander (see :func:`expander_power_gain`): near exact whenever the
detector sees the same level on both sides. :func:`expander_gain_db` is the closed-form
inverse of the static curve (the steady-state relation between output and input level).

Shapes: audio ``(B, C, T)``; parameters per clip ``(B,)`` (threshold in dBFS RMS, ratio ``:1``,
knee width in dB, attack/release in ms, makeup in dB).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from automaster.dsp.stft import hann_window
from automaster.effects.ballistics import TorchOnePole
from automaster.effects._checks import (
    ParamLike, check_audio, check_sample_rate, clip_param, needs_grad, upsample_linear,
)

RMS_TIME_S = 0.010  # RMS averaging time constant of the detector
POWER_FLOOR = 1e-10  # -100 dBFS: level of digital silence for the detector
GAIN_STEP = 16  # samples between evaluations of the static curve in the forward compressor
_REUSE = 1e-4  # relative detector change below which the inverse reuses its last gain
_KNEE_EPS = 1e-6  # dB; keeps the knee formulas finite at knee_db = 0 (the knee branch is then empty)
BACKENDS = ("auto", "numba", "torch")  # ballistics implementations; "auto": numba on CPU, torch elsewhere


# ----------------------------------------------------------------------------- ballistics kernel
@numba.njit(cache=True)
def _one_pole_forward(p, b_att, b_rel):  # pragma: no cover - compiled
    # b = 1 - a, in p's dtype: the update s += b (p - s) stays accurate in float32 for long
    # time constants (a close to 1) and runs about twice as fast as a float64 state.
    rows, n = p.shape
    s = np.empty_like(p)
    attack = np.empty(p.shape, dtype=np.bool_)
    for r in range(rows):
        ba = b_att[r]
        br = b_rel[r]
        state = p[r, 0] * 0
        for i in range(n):
            v = p[r, i]
            rising = v > state
            state += (ba if rising else br) * (v - state)
            s[r, i] = state
            attack[r, i] = rising
    return s, attack


@numba.njit(cache=True)
def _detector_sampled(p, b_rms, b_att, b_rel, step):  # pragma: no cover - compiled
    """The two one-pole passes of :func:`detector_power` fused, without autograd's bookkeeping:
    the RMS window then the attack/release smoother (the same float operations in the same order
    as two :func:`_one_pole_forward` calls), keeping every ``step``-th output."""
    rows, n = p.shape
    out = np.empty((rows, (n + step - 1) // step), p.dtype)
    for r in range(rows):
        b1 = b_rms[r]
        ba = b_att[r]
        br = b_rel[r]
        s1 = p[r, 0] * 0
        s2 = s1
        for i in range(n):
            s1 += b1 * (p[r, i] - s1)
            s2 += (ba if s1 > s2 else br) * (s1 - s2)
            if i % step == 0:
                out[r, i // step] = s2
    return out


@numba.njit(cache=True)
def _one_pole_backward(p, s, attack, a_att, a_rel, grad_s):  # pragma: no cover - compiled
    rows, n = p.shape
    grad_p = np.empty_like(p)
    grad_att = np.zeros(rows)
    grad_rel = np.zeros(rows)
    for r in range(rows):
        aa = a_att[r]
        ar = a_rel[r]
        acc = 0.0  # dL/ds[i], including everything s[i] feeds later in time
        g_att = 0.0
        g_rel = 0.0
        for i in range(n - 1, -1, -1):
            acc += grad_s[r, i]
            prev = s[r, i - 1] if i > 0 else 0.0
            ds_da = prev - p[r, i]  # s[i] = a s[i-1] + (1 - a) p[i]
            if attack[r, i]:
                a = aa
                g_att += acc * ds_da
            else:
                a = ar
                g_rel += acc * ds_da
            grad_p[r, i] = (1.0 - a) * acc
            acc *= a
        grad_att[r] = g_att
        grad_rel[r] = g_rel
    return grad_p, grad_att, grad_rel


@numba.njit(cache=True)
def _static_gain_db(level, threshold, slope, knee):  # pragma: no cover - compiled
    over = level - threshold
    if 2.0 * over > knee:
        return slope * over
    if 2.0 * over < -knee or knee <= 0.0:
        return 0.0
    u = over + 0.5 * knee
    return slope * u * u / (2.0 * knee)


_DB_PER_NEPER = 10.0 / math.log(10.0)  # power dB per unit of natural log


@numba.njit(cache=True)
def _expander_feedback(py, a_rms, a_att, a_rel, threshold, slope, knee):  # pragma: no cover
    """Power gain ``k2`` with ``py * k2`` the compressor's input power (closed-loop inverse).

    Runs the compressor's own detector on the reconstructed input. The gain at sample ``i``
    depends on the detector state that already includes sample ``i``; one fixed-point step from
    the previous gain settles it (a single sample barely moves an RMS detector). The static curve
    (a natural log and an exponential: cheaper than log10 and a power, and on the recursion's
    critical path) is re-evaluated only when the detector moved by more than ``_REUSE``
    (relative, ~4e-4 dB), and not at all below the knee (unity gain).
    """
    rows, n = py.shape
    k2 = np.empty_like(py)
    for r in range(rows):
        s1 = 0.0
        s2 = 0.0
        g2 = 1.0
        last = -1.0  # detector value the current g2 was computed at
        # Below this detector power the static curve is flat (gain 1): no log needed.
        knee_start = 10.0 ** ((threshold[r] - 0.5 * max(knee[r], 0.0)) / 10.0) - POWER_FLOOR
        for i in range(n):
            t1 = a_rms[r] * s1 + (1.0 - a_rms[r]) * py[r, i] * g2
            a = a_att[r] if t1 > s2 else a_rel[r]
            t2 = a * s2 + (1.0 - a) * t1
            if abs(t2 - last) > _REUSE * last:
                if t2 < knee_start:
                    g2 = 1.0
                else:
                    level = _DB_PER_NEPER * math.log(t2 + POWER_FLOOR)
                    g2 = math.exp(-_static_gain_db(level, threshold[r], slope[r], knee[r]) / _DB_PER_NEPER)
                last = t2
            # The state advances with the input power implied by the settled gain.
            s1 = a_rms[r] * s1 + (1.0 - a_rms[r]) * py[r, i] * g2
            a = a_att[r] if s1 > s2 else a_rel[r]
            s2 = a * s2 + (1.0 - a) * s1
            k2[r, i] = g2
    return k2


class _OnePole(torch.autograd.Function):
    """Autograd wrapper of the numba kernels (CPU; other devices round-trip through it)."""

    @staticmethod
    def forward(ctx, power: torch.Tensor, a_att: torch.Tensor, a_rel: torch.Tensor) -> torch.Tensor:
        p = power.detach().cpu().contiguous().numpy()
        aa = a_att.detach().cpu().double().numpy()
        ar = a_rel.detach().cpu().double().numpy()
        s, attack = _one_pole_forward(p, (1.0 - aa).astype(p.dtype), (1.0 - ar).astype(p.dtype))
        ctx.arrays = (p, s, attack, aa, ar)
        ctx.meta = (power.device, a_att.dtype, a_rel.dtype)
        return torch.from_numpy(s).to(power.device)

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor):
        p, s, attack, aa, ar = ctx.arrays
        device, att_dtype, rel_dtype = ctx.meta
        g = grad_s.detach().cpu().contiguous().numpy().astype(p.dtype, copy=False)
        grad_p, grad_att, grad_rel = _one_pole_backward(p, s, attack, aa, ar, g)
        return (
            torch.from_numpy(grad_p).to(device),
            torch.from_numpy(grad_att).to(device, att_dtype),
            torch.from_numpy(grad_rel).to(device, rel_dtype),
        )


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"expected backend in {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    return backend


def one_pole_ballistics(
    power: torch.Tensor, attack_coef: torch.Tensor, release_coef: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Attack/release one-pole smoother ``s[n] = a s[n-1] + (1 - a) p[n]``, ``s[-1] = 0``.

    ``a`` is ``attack_coef`` where ``p[n] > s[n-1]``, ``release_coef`` otherwise. Differentiable
    w.r.t. ``power`` and both coefficients (exact backward by the reverse-time recursion).

    Args:
        power: ``(R, N)`` non-negative sequences (rows are independent).
        attack_coef, release_coef: ``(R,)`` coefficients in [0, 1).
        backend: ``"numba"`` (CPU kernel; other devices copy through the CPU), ``"torch"``
            (:mod:`automaster.effects.ballistics`, on ``power``'s device) or ``"auto"`` (numba
            for CPU tensors, torch otherwise).

    Returns:
        ``(R, N)`` smoothed sequences, same dtype and device as ``power``.
    """
    if power.ndim != 2:
        raise ValueError(f"expected (R, N) power, got shape {tuple(power.shape)}")
    rows = power.shape[0]
    for name, c in (("attack_coef", attack_coef), ("release_coef", release_coef)):
        if c.shape != (rows,):
            raise ValueError(f"expected {name} of shape ({rows},), got shape {tuple(c.shape)}")
    if _resolve_backend(backend, power.device) == "torch":
        return TorchOnePole.apply(power, attack_coef, release_coef)
    return _OnePole.apply(power, attack_coef, release_coef)


def time_coef(time_s: torch.Tensor, rate_hz: float) -> torch.Tensor:
    """One-pole coefficient ``exp(-1 / (time_s * rate_hz))`` of a time constant at a given rate."""
    return torch.exp(-1.0 / (time_s.clamp_min(1e-6) * rate_hz))


# ----------------------------------------------------------------------------- static curve
def compressor_gain_db(
    level_db: torch.Tensor, threshold_db: torch.Tensor, ratio: torch.Tensor, knee_db: torch.Tensor
) -> torch.Tensor:
    """Gain in dB (<= 0) of the soft-knee static curve at input ``level_db``: ``curve(L) - L``.

    Parameters broadcast against ``level_db`` (give them as ``(B, 1)`` for ``(B, T)`` levels).
    """
    over = level_db - threshold_db
    knee = knee_db.clamp_min(0.0)
    slope = 1.0 / ratio - 1.0
    # Inside the knee: (1/R - 1) (over + W/2)^2 / (2W); u is clamped so the unused branch stays finite.
    u = torch.minimum((over + 0.5 * knee).clamp_min(0.0), knee)
    in_knee = u.square() / (2.0 * knee.clamp_min(_KNEE_EPS))
    return slope * torch.where(2.0 * over > knee, over, in_knee)


def compressor_curve_db(
    level_db: torch.Tensor, threshold_db: torch.Tensor, ratio: torch.Tensor, knee_db: torch.Tensor
) -> torch.Tensor:
    """Output level in dB of the static curve (Giannoulis et al. 2012, eq. 4) at ``level_db``."""
    return level_db + compressor_gain_db(level_db, threshold_db, ratio, knee_db)


def expander_gain_db(
    level_db: torch.Tensor, threshold_db: torch.Tensor, ratio: torch.Tensor, knee_db: torch.Tensor
) -> torch.Tensor:
    """Gain in dB (>= 0) that maps an output level of the static curve back to its input level.

    Closed-form inverse of :func:`compressor_curve_db`: above the knee ``L_in = T + R (L_out - T)``;
    inside it the quadratic ``a u^2 + u - v = 0`` is solved as ``u = 2v / (1 + sqrt(1 + 4 a v))``,
    which stays accurate as ``a -> 0`` (ratio -> 1).
    """
    knee = knee_db.clamp_min(0.0)
    v = level_db - threshold_db + 0.5 * knee  # distance above the knee's start, output side
    knee_top = 0.5 * knee * (1.0 + 1.0 / ratio)  # the knee's width measured on the output side
    a = (1.0 / ratio - 1.0) / (2.0 * knee.clamp_min(_KNEE_EPS))
    vk = torch.minimum(v.clamp_min(0.0), knee_top)
    # 1 + 4 a v >= 1 / R^2 inside the knee; the clamp only guards rounding.
    uk = 2.0 * vk / (1.0 + torch.sqrt((1.0 + 4.0 * a * vk).clamp_min(1e-6)))
    above = (ratio - 1.0) * (level_db - threshold_db)
    return torch.where(v > knee_top, above, uk - vk)


# ----------------------------------------------------------------------------- effect and inverse
def _clip_params(x: torch.Tensor, **values: ParamLike) -> dict[str, torch.Tensor]:
    batch = x.shape[0]
    out = {k: clip_param(k, v, batch, x) for k, v in values.items()}
    for name in ("ratio", "attack_ms", "release_ms"):
        if name in out and not bool((out[name] > 0).all()):
            raise ValueError(f"expected positive {name}, got {out[name].detach().cpu().tolist()}")
    if "ratio" in out and not bool((out["ratio"] >= 1).all()):
        raise ValueError(f"expected ratio >= 1, got {out['ratio'].detach().cpu().tolist()}")
    return out


def detector_power(
    x: torch.Tensor, sample_rate: float, attack_ms: torch.Tensor, release_ms: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Smoothed channel-linked power, ``(B, C, T)`` -> ``(B, T)``; times ``(B,)`` in ms; ``backend``
    of :func:`one_pole_ballistics`."""
    power = x.square().mean(dim=1)  # (B, T): one detector for all channels keeps the stereo image
    a_rms = torch.full_like(attack_ms, math.exp(-1.0 / (RMS_TIME_S * sample_rate)))
    power = one_pole_ballistics(power, a_rms, a_rms, backend)
    a_att = time_coef(attack_ms / 1000.0, sample_rate)
    a_rel = time_coef(release_ms / 1000.0, sample_rate)
    return one_pole_ballistics(power, a_att, a_rel, backend)


def _detector_power_sampled(
    x: torch.Tensor, sample_rate: float, attack_ms: torch.Tensor, release_ms: torch.Tensor
) -> torch.Tensor:
    """``detector_power(...)[:, ::GAIN_STEP]`` in one numba pass (CPU, no autograd)."""
    power = x.square().mean(dim=1).contiguous().numpy()  # (B, T)

    def one_minus(a: torch.Tensor) -> np.ndarray:  # 1 - a in the power's dtype, as _OnePole does
        return (1.0 - a.double().numpy()).astype(power.dtype)

    a_rms = torch.full_like(attack_ms, math.exp(-1.0 / (RMS_TIME_S * sample_rate)))
    a_att = time_coef(attack_ms / 1000.0, sample_rate)
    a_rel = time_coef(release_ms / 1000.0, sample_rate)
    return torch.from_numpy(_detector_sampled(power, one_minus(a_rms), one_minus(a_att), one_minus(a_rel), GAIN_STEP))


def compressor(
    x: torch.Tensor,
    sample_rate: float,
    threshold_db: ParamLike,
    ratio: ParamLike,
    knee_db: ParamLike,
    attack_ms: ParamLike,
    release_ms: ParamLike,
    makeup_db: ParamLike,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Compress ``x`` ``(B, C, T)`` -> ``(B, C, T)``; per-clip parameters ``(B,)`` (see module doc);
    ``backend`` of the ballistics (:func:`one_pole_ballistics`)."""
    check_audio(x)
    sample_rate = check_sample_rate(sample_rate)
    backend = _resolve_backend(backend, x.device)
    p = _clip_params(x, threshold_db=threshold_db, ratio=ratio, knee_db=knee_db,
                     attack_ms=attack_ms, release_ms=release_ms, makeup_db=makeup_db)
    # The detector is smooth (RMS window 10 ms), so the static curve is evaluated every
    # GAIN_STEP samples and the gain interpolated: ~1e-4 dB off, for a tenth of the cost.
    fast = backend == "numba" and x.device.type == "cpu" and not needs_grad(x, *p.values())
    if fast:
        sampled = _detector_power_sampled(x, sample_rate, p["attack_ms"], p["release_ms"])
    else:
        sampled = detector_power(x, sample_rate, p["attack_ms"], p["release_ms"], backend)[:, ::GAIN_STEP]  # (B, T / step)
    level = 10.0 * torch.log10(sampled + POWER_FLOOR)
    col = {k: v.unsqueeze(-1) for k, v in p.items()}  # (B, 1) to broadcast over time
    gain_db = compressor_gain_db(level, col["threshold_db"], col["ratio"], col["knee_db"]) + col["makeup_db"]
    gain = torch.pow(10.0, gain_db / 20.0)  # (B, T / step)
    if fast:  # interpolated and applied in one pass, no (B, T) gain array
        out = torch.empty_like(x)
        _apply_sampled_gain(x.contiguous().numpy(), gain.numpy(), GAIN_STEP, out.numpy())
        return out
    return x * upsample_linear(gain, GAIN_STEP, x.shape[-1]).unsqueeze(1)


@numba.njit(cache=True)
def _apply_sampled_gain(x, gain, step, out):  # pragma: no cover - compiled
    """``out = x * upsample_linear(gain, step, T)`` for ``x`` ``(B, C, T)``, ``gain`` ``(B, N)``:
    gain ``j`` at sample ``j * step``, linear in between, the last one held."""
    batch, channels, n = x.shape
    last = gain.shape[1] - 1
    for b in range(batch):
        for c in range(channels):
            for i in range(n):
                j = i // step
                if j < last:
                    frac = (i - j * step) / step
                    g = gain[b, j] + (gain[b, j + 1] - gain[b, j]) * frac
                else:
                    g = gain[b, last]
                out[b, c, i] = x[b, c, i] * g


def expander_power_gain(
    power: torch.Tensor,
    sample_rate: float,
    threshold_db: ParamLike,
    ratio: ParamLike,
    knee_db: ParamLike,
    attack_ms: ParamLike,
    release_ms: ParamLike,
    makeup_db: ParamLike,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Linear amplitude gain ``(B, T)`` undoing the compressor, from its output's detector power.

    ``power`` is ``(B, T)``: the mean over channels of the compressed audio squared (what
    :func:`compressor_inverse_gain` computes; the inverse chain passes its own estimate).

    The inverse of a feed-forward compressor is a feedback expander: makeup is removed, then the
    compressor's own detector runs on the *reconstructed input* (a numba recursion), so its
    attack/release see what the compressor saw. Reading the level of the output instead (open
    loop) would hold each transient for the release time and over-expand by up to ``ratio``
    times the error. Gradients come from the gain recomputed in torch from the detached
    reconstruction (a one-step fixed-point gradient: exact w.r.t. the audio and makeup at a
    fixed detector; it omits the loop's own sensitivity, so it under-states the gradients of
    the other parameters by up to a factor ``ratio``). Without autograd that step is skipped.
    The feedback recursion itself runs in numba on the CPU whatever the device (a closed loop
    through the static curve: no scan form); ``backend`` applies to the gradient's detector.
    """
    if power.ndim != 2:
        raise ValueError(f"expected (B, T) detector power, got shape {tuple(power.shape)}")
    sample_rate = check_sample_rate(sample_rate)
    p = _clip_params(power, threshold_db=threshold_db, ratio=ratio, knee_db=knee_db,
                     attack_ms=attack_ms, release_ms=release_ms, makeup_db=makeup_db)
    makeup_power = torch.pow(10.0, -p["makeup_db"] / 10.0).unsqueeze(-1)  # (B, 1)
    a_rms = torch.full_like(p["attack_ms"], math.exp(-1.0 / (RMS_TIME_S * sample_rate)))
    a_att = time_coef(p["attack_ms"] / 1000.0, sample_rate)
    a_rel = time_coef(p["release_ms"] / 1000.0, sample_rate)

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().double().numpy()

    py = (power * makeup_power).detach()
    k2 = _expander_feedback(
        py.cpu().contiguous().numpy(), arr(a_rms), arr(a_att), arr(a_rel),
        arr(p["threshold_db"]), arr(1.0 / p["ratio"] - 1.0), arr(p["knee_db"].clamp_min(0.0)),
    )
    k2 = torch.from_numpy(k2).to(power.device)
    gain = torch.sqrt(k2 * makeup_power)
    if not needs_grad(power, *p.values()):
        return gain
    # Same value, torch gradients: the forward gain computer on the reconstructed input.
    x_power = one_pole_ballistics(one_pole_ballistics(py * k2, a_rms, a_rms, backend), a_att, a_rel, backend)
    col = {k: v.unsqueeze(-1) for k, v in p.items()}
    level = 10.0 * torch.log10(x_power + POWER_FLOOR)
    gain_db = compressor_gain_db(level, col["threshold_db"], col["ratio"], col["knee_db"]) + col["makeup_db"]
    smooth = torch.pow(10.0, -gain_db / 20.0)
    return gain.detach() + (smooth - smooth.detach())


def compressor_inverse_gain(
    y: torch.Tensor,
    sample_rate: float,
    threshold_db: ParamLike,
    ratio: ParamLike,
    knee_db: ParamLike,
    attack_ms: ParamLike,
    release_ms: ParamLike,
    makeup_db: ParamLike,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Linear gain ``(B, T)`` that undoes :func:`compressor` on ``y`` ``(B, C, T)`` (makeup included)."""
    check_audio(y)
    return expander_power_gain(
        y.square().mean(dim=1), sample_rate, threshold_db, ratio, knee_db, attack_ms, release_ms, makeup_db,
        backend=backend,
    )


def compressor_inverse(
    y: torch.Tensor,
    sample_rate: float,
    threshold_db: ParamLike,
    ratio: ParamLike,
    knee_db: ParamLike,
    attack_ms: ParamLike,
    release_ms: ParamLike,
    makeup_db: ParamLike,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Undo :func:`compressor` on ``y`` ``(B, C, T)`` with the same parameters (see
    :func:`expander_power_gain`): near exact whenever the detector sees the same level on both
    sides."""
    g = compressor_inverse_gain(y, sample_rate, threshold_db, ratio, knee_db, attack_ms, release_ms, makeup_db, backend=backend)
    return y * g.unsqueeze(1)


def frame_mean_square(power: torch.Tensor) -> torch.Tensor:
    """Mean square of each windowed frame from an STFT power spectrogram (Parseval).

    ``power`` is ``|S|^2`` ``(..., n_bins, F)`` of :func:`automaster.dsp.stft.stft` (periodic Hann);
    returns ``(..., F)``, the Hann-weighted mean of ``x^2`` over each frame.
    """
    n_fft = 2 * (power.shape[-2] - 1)
    # One-sided spectrum: interior bins stand for two (positive and negative frequency).
    weights = torch.full((power.shape[-2],), 2.0, dtype=power.dtype, device=power.device)
    weights[0] = weights[-1] = 1.0
    window_energy = hann_window(n_fft, power).square().sum()
    return torch.matmul(weights, power) / (n_fft * window_energy)
