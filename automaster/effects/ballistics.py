"""Attack/release one-pole ballistics in plain torch: runs on the input's device (GPU included).

The smoother ``s[n] = a[n] s[n-1] + (1 - a[n]) p[n]`` picks ``a[n]`` = the attack coefficient
where ``p[n] > s[n-1]`` and the release one otherwise. For a *given* choice (a mask) it is a
linear recurrence, which :func:`linear_scan` solves for all samples at once (a blocked doubling
scan: a few vectorised passes, no per-sample loop). The choice itself depends on the state, so the
mask is found by policy iteration:

* With attack faster than release, one step is ``s[n] = max(f_att(s[n-1]), f_rel(s[n-1]))``
  (both maps are increasing and affine; the rule ``p > s`` picks the larger), so the exact
  smoother is the largest over all masks of the linear solutions (the smallest when the attack
  is the slower one). Evaluating the smoother for a mask, then re-choosing every sample's
  coefficient from that state, moves monotonically towards it (policy iteration, as in dynamic
  programming) and stops when the mask no longer changes: the exact recursion, up to rounding.
  Each round fixes at least the first wrong choice and usually whole stretches: a compressor's
  detector on music settles in 5-20 rounds; ``MAX_ROUNDS`` only guards pathological inputs.

The backward is exact for the final mask (the same reverse-time recursion as the numba kernel,
also as a scan): the coefficient choice is piecewise constant, so it carries no gradient.

Shapes: ``power`` ``(R, N)``, coefficients ``(R,)``; rows are independent.
"""

from __future__ import annotations

import torch

MAX_ROUNDS = 64  # policy-iteration bound (music settles in far fewer)
BLOCK = 128  # samples per block of the blocked scan


def _doubling_scan(log_decay: torch.Tensor, drive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, log of the decay from the first sample to each)`` by a doubling (Hillis-Steele) scan:
    step ``k`` folds in the partial sums ``2^k`` samples back (``log2(N)`` vectorised steps)."""
    log_a = log_decay.clone()
    s = drive.clone()
    n = s.shape[-1]
    shift = 1
    while shift < n:
        # s[i] += A[i] s[i - shift]; A[i] *= A[i - shift] (A: the decay over the current span)
        s[..., shift:] = s[..., shift:] + torch.exp(log_a[..., shift:]) * s[..., :-shift]
        log_a[..., shift:] = log_a[..., shift:] + log_a[..., :-shift]
        shift *= 2
    return s, log_a


def linear_scan(log_decay: torch.Tensor, drive: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``s[n] = exp(log_decay[n]) s[n-1] + drive[n]`` along the last dim, ``s[-1] = 0``.

    Blocked: a doubling scan inside blocks of ``block`` samples, the same recursion over the
    blocks' end states (recursively), then each block's start state carried in. Decays are
    carried as logarithms, so a coefficient close to 1 is never rounded to float precision and
    then raised to a large power (the rounding enters once, not once per sample).
    """
    n = drive.shape[-1]
    if n <= block:
        return _doubling_scan(log_decay, drive)[0]
    pad = -n % block
    blocks = (n + pad) // block
    shape = (*drive.shape[:-1], blocks, block)
    local, log_span = _doubling_scan(
        torch.nn.functional.pad(log_decay, (0, pad)).reshape(shape), torch.nn.functional.pad(drive, (0, pad)).reshape(shape)
    )  # (..., blocks, block)
    ends = linear_scan(log_span[..., -1], local[..., -1], block)  # (..., blocks): state at each block's end
    starts = torch.nn.functional.pad(ends[..., :-1], (1, 0)).unsqueeze(-1)  # state entering each block
    s = local + torch.exp(log_span) * starts
    return s.reshape(*drive.shape[:-1], blocks * block)[..., :n]


def _reverse_scan(log_decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """``r[n] = drive[n] + exp(log_decay[n+1]) r[n+1]``, ``r[N] = 0`` (the adjoint recursion)."""
    shifted = torch.cat([log_decay[..., 1:], torch.full_like(log_decay[..., :1], -torch.inf)], dim=-1)
    return linear_scan(shifted.flip(-1), drive.flip(-1)).flip(-1)


def _coefficients(a: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log a, 1 - a)`` per row as ``(R, 1)``, computed in float64 (as the numba path does)."""
    a64 = a.detach().double()
    return torch.log(a64).to(dtype).unsqueeze(-1), (1.0 - a64).to(dtype).unsqueeze(-1)


def _previous(s: torch.Tensor) -> torch.Tensor:
    """``s[n-1]`` with ``s[-1] = 0``."""
    return torch.nn.functional.pad(s[..., :-1], (1, 0))


def ballistics_forward(
    power: torch.Tensor, attack_coef: torch.Tensor, release_coef: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(smoothed, attack mask, rounds)`` of the attack/release smoother (module doc), no autograd.
    Half-precision input is smoothed in float32 (the scans' sums need its mantissa)."""
    p = power.detach().to(torch.promote_types(power.dtype, torch.float32))
    log_att, b_att = _coefficients(attack_coef, p.dtype)
    log_rel, b_rel = _coefficients(release_coef, p.dtype)
    if torch.equal(attack_coef, release_coef):  # a plain one-pole (the RMS window): one scan
        s = linear_scan(log_att.expand_as(p), b_att * p)
        return s, p > _previous(s), 1
    # First guess: attack wherever the input rises (the smoother follows it from below).
    attack = p > _previous(p)
    for rounds in range(1, MAX_ROUNDS + 1):
        s = linear_scan(torch.where(attack, log_att, log_rel), torch.where(attack, b_att, b_rel) * p)
        chosen = p > _previous(s)
        if torch.equal(chosen, attack):
            break
        attack = chosen
    return s, attack, rounds


class TorchOnePole(torch.autograd.Function):
    """Autograd wrapper of :func:`ballistics_forward` with the exact backward for its mask."""

    @staticmethod
    def forward(ctx, power: torch.Tensor, attack_coef: torch.Tensor, release_coef: torch.Tensor) -> torch.Tensor:
        s, attack, _ = ballistics_forward(power, attack_coef, release_coef)
        ctx.save_for_backward(power, s, attack, attack_coef, release_coef)
        return s.to(power.dtype)

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor):
        power, s, attack, attack_coef, release_coef = ctx.saved_tensors
        log_att, b_att = _coefficients(attack_coef, s.dtype)
        log_rel, b_rel = _coefficients(release_coef, s.dtype)
        # acc[n] = dL/ds[n] including everything s[n] feeds later in time.
        acc = _reverse_scan(torch.where(attack, log_att, log_rel), grad_s.to(s.dtype))
        grad_p = torch.where(attack, b_att, b_rel) * acc
        ds_da = (acc * (_previous(s) - power.to(s.dtype))).double()  # s[n] = a s[n-1] + (1 - a) p[n]
        grad_att = torch.where(attack, ds_da, 0.0).sum(-1)
        grad_rel = torch.where(attack, 0.0, ds_da).sum(-1)
        return grad_p.to(power.dtype), grad_att.to(attack_coef.dtype), grad_rel.to(release_coef.dtype)
