"""What the chain path applies: the echo stage and the forecast policy.

* Echo stage (every inversion, before the model): the strongest echo is measured from the input's
  own cepstrum and undone (the exact IIR inverse) when its gain is at least ``min_echo_gain`` and
  it is confirmed as an echo, not the music's own repetition (:func:`automaster.dsp.cepstrum.detect_echo`);
  then the next in what is left, up to ``MAX_ECHO_TAPS``; several are then undone together, the exact
  inverse of a multi-tap echo (:func:`undo_echoes`).
* Forecast policy (chain): a forecast whose validation error (recorded in the checkpoint) is not
  clearly below the predict-the-mean baseline's takes its effect's neutral value: a correction the
  model cannot make is not applied.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np
import torch

from automaster.dsp.cepstrum import detect_echo, detect_echo_in
from automaster.dsp.constants import HOP_LENGTH, MODEL_RATE
from automaster.effects.echo import FRACTIONAL_HALF_TAPS, echo_inverse_time, multi_echo_inverse_time
from automaster.effects.params import BY_NAME, PARAM_NAMES, PARAMS
from automaster.model.validate import mae_ratios

# A forecast is applied when its validation MAE is at most this share of the predict-the-mean
# baseline's; an echo estimate is undone from this gain up (clean music measures up to ~0.18 from
# its own cepstrum, 90% below 0.13: automaster/dsp/cepstrum.py).
MAX_FORECAST_ERROR = 0.8
MIN_ECHO_GAIN = 0.15
# A confirmed echo is treated as a feedback delay (1 + a z^-d) / (1 - f z^-d) when the cepstrum's
# two harmonics put its feedback f at least this high (single and multi-tap echoes, ours and ffmpeg's,
# measure |f| <= 0.055 on the validation clips, pedalboard's Delay 0.17-0.53: BENCHMARKS.md, "Damage by other implementations").
MIN_ECHO_FEEDBACK = 0.1
MAX_ECHO_FEEDBACK = 0.9
# Echoes undone (multi-tap delays: ffmpeg's aecho takes several), at most this many; several are
# undone together when their gains sum to at most this (below 1: a stable inverse, peaking at 20 dB).
MAX_ECHO_TAPS = 3
MAX_JOINT_ECHO_GAIN = 0.9
ECHO_PARAMS = ("echo_delay_s", "echo_gain")


def forecast_errors(meta: dict[str, Any]) -> dict[str, float]:
    """Per parameter, the checkpoint's validation MAE over the predict-the-mean baseline's
    (``{}`` when the checkpoint has no such metrics, e.g. a model saved outside training)."""
    try:
        metrics = json.loads(meta.get("extra", {}).get("metrics", "{}"))
        ratios = mae_ratios({k: float(v) for k, v in metrics.items()})
    except (TypeError, ValueError):
        return {}
    return {name: r for name, r in ratios.items() if math.isfinite(r)}


def chain_policy(forecast_skill: dict[str, float], echo_removal: bool, max_forecast_error: float | None) -> dict[str, str]:
    """Where each chain parameter comes from: ``"forecast"``, ``"neutral"`` (the forecast is not
    better than the mean on validation, and the parameter has a neutral value) or ``"estimate"``
    (echo, measured from the audio by the echo stage)."""
    out = {}
    for p in PARAMS:
        error = forecast_skill.get(p.name)
        unreliable = max_forecast_error is not None and (error is None or error > max_forecast_error)
        if echo_removal and p.name in ECHO_PARAMS:
            out[p.name] = "estimate"
        elif unreliable and p.neutral is not None and forecast_skill:
            out[p.name] = "neutral"
        else:
            out[p.name] = "forecast"
    return out


def chain_is_identity(policy: dict[str, str]) -> bool:
    """True when ``policy`` renders every effect neutral (each parameter that has a neutral value
    takes it; the echo's gain is the echo stage's): the inverse chain is then the identity, so
    neither the forecaster nor the chain needs to run."""
    return all(policy.get(p.name) == "neutral" or (p.name == "echo_gain" and policy.get(p.name) == "estimate")
               for p in PARAMS if p.neutral is not None)


def _norm(name: str, value: float) -> float:
    return float(BY_NAME[name].normalize(torch.tensor(float(value))))


def apply_chain_policy(
    params_norm: np.ndarray, policy: dict[str, str], echo: dict[str, Any], echo_removal: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The chain's parameters ``(P, F)`` (normalised) after ``policy``: ``(to render, to report)``.

    With the echo stage on, the rendered echo gain is 0 (that stage has undone the echo) and the
    reported echo is the stage's (its gain 0 when it left the audio alone).
    """
    render = params_norm.copy()
    for name, how in policy.items():
        if how == "neutral" or (how == "estimate" and name == "echo_gain"):
            render[PARAM_NAMES.index(name)] = _norm(name, BY_NAME[name].neutral)
    report = render.copy()
    if echo_removal and echo["echo_delay_s"] is not None:
        report[PARAM_NAMES.index("echo_delay_s")] = _norm("echo_delay_s", echo["echo_delay_s"])
        report[PARAM_NAMES.index("echo_gain")] = _norm("echo_gain", echo["echo_gain"] if echo["echo_removed"] else 0.0)
    return render, report


def echo_feedback(first: float, second: float) -> float:
    """The feedback ``f`` of an echo ``(1 + a z^-d) / (1 - f z^-d)`` from its cepstrum in gain units
    at the delay (``first = a + f``) and at twice it (``second = (f^2 - a^2) / 2``): ``f - a =
    2 second / first``. A single echo (``f = 0``) has ``second = -first^2 / 2``."""
    return 0.5 * (first + 2.0 * second / first) if first > 0 else 0.0


def find_echo(signal: Any, n_samples: int, sr: int, min_echo_gain: float, *, lazy: bool = False
              ) -> tuple[dict[str, Any], float | None]:
    """The echo stage's decision: ``(what was measured, the inverse's gain or None)`` (flat
    scalars: they go into batch summaries). ``signal`` is the audio ``(C, T)``, or with ``lazy``
    a mono downmix read a segment at a time (:func:`automaster.dsp.cepstrum.detect_echo_in`).
    ``note["echo_feedback"]``: the feedback the inverse undoes (0: a single echo); the gain is
    then the zero's, ``a`` (:func:`echo_feedback`)."""
    note: dict[str, Any] = {"echo_removed": False, "echo_delay_s": None, "echo_gain": None, "echo_feedback": 0.0}
    delay, gain = BY_NAME["echo_delay_s"], BY_NAME["echo_gain"]
    longest = min(1.04 * delay.high, 0.25 * n_samples / sr)  # four delays must fit in the input
    try:
        echo = (detect_echo_in if lazy else detect_echo)(
            signal, sr, min_gain=min_echo_gain, min_delay_s=0.9 * delay.low, max_delay_s=longest)
    except ValueError:  # too short to tell an echo from the music: leave it alone
        return note, None
    note.update(echo_delay_s=echo.delay_s, echo_gain=echo.gain)
    usable = echo.delay_s * sr >= 2 * FRACTIONAL_HALF_TAPS and delay.low <= echo.delay_s <= delay.high
    if not echo.confirmed or not usable:
        return note, None
    note["echo_removed"] = True
    feedback = echo_feedback(echo.gain, echo.second_harmonic)
    if feedback < MIN_ECHO_FEEDBACK:
        return note, min(echo.gain, gain.high)
    note["echo_feedback"] = min(feedback, MAX_ECHO_FEEDBACK)
    return note, float(np.clip(echo.gain - note["echo_feedback"], -gain.high, gain.high))


def undo_echoes(signal: Any, find: Callable[[Any], tuple[dict[str, Any], float | None]],
                undo: Callable[[Any, dict[str, Any], float], Any],
                undo_jointly: Callable[[Any, list[float], list[float]], Any], max_taps: int = MAX_ECHO_TAPS
                ) -> tuple[Any, dict[str, Any]]:
    """Undo up to ``max_taps`` echoes: ``find`` (:func:`find_echo` on a signal) decides, ``undo``
    applies one inverse, and the next echo is sought in what it left. A multi-tap echo ``1 + g1
    z^-d1 + g2 z^-d2`` puts a peak of ``g_i`` at each delay, and once the strongest is undone, the next
    measures ``g2`` in the rest (with the same confirmation). Undone one after the other, the inverses
    leave the cross terms of their product (``g1 g2`` at ``d1 + d2``), so several taps without feedback
    are then undone together from the input, ``undo_jointly(signal, delays_s, gains)``: the exact
    inverse of the FIR, when ``sum |g_i| <= MAX_JOINT_ECHO_GAIN`` keeps it stable. Clean music costs one
    detection: the search stops at the first echo not confirmed.

    Returns ``(signal, note)``: ``note`` is the first detection's (its ``echo_*`` fields, as before)
    with ``echo_taps``, every echo undone as ``{"delay_s", "gain", "feedback"}`` (measured gain)."""
    original = signal
    note, gain = find(signal)
    taps: list[dict[str, float]] = []
    gains: list[float] = []  # the inverses' gains (clipped)
    current = note
    while gain is not None:
        signal = undo(signal, current, gain)
        taps.append({"delay_s": current["echo_delay_s"], "gain": current["echo_gain"], "feedback": current["echo_feedback"]})
        gains.append(gain)
        if len(taps) == max_taps:
            break
        current, gain = find(signal)
    if len(taps) > 1 and not any(t["feedback"] for t in taps) and sum(abs(g) for g in gains) <= MAX_JOINT_ECHO_GAIN:
        signal = undo_jointly(original, [t["delay_s"] for t in taps], gains)
    note["echo_taps"] = taps
    return signal, note


def remove_echo(audio: np.ndarray, sr: int, min_echo_gain: float, max_taps: int = MAX_ECHO_TAPS
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """The echo stage: ``(audio without its echoes, what was measured)`` (:func:`undo_echoes`)."""
    def undo(x: np.ndarray, note: dict[str, Any], gain: float) -> np.ndarray:
        return echo_inverse_time(x, sr, note["echo_delay_s"], gain, feedback=note["echo_feedback"])

    return undo_echoes(audio, lambda x: find_echo(x, x.shape[-1], sr, min_echo_gain), undo,
                       lambda x, delays, gains: multi_echo_inverse_time(x, sr, delays, gains), max_taps)


def parameter_stats(params_norm: np.ndarray, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Per-file statistics of the chain's parameters ``(P, F)`` (normalised) in physical units.

    Every ParamSpec entry gets ``unit``, ``per_frame``, ``mean``/``std``/``min``/``max`` over
    frames, ``applied``: the value the chain used (per-clip parameters: the track mean of the
    normalised prediction, denormalised; per-frame ones: the trajectory, so ``null``), and with
    ``sources`` its ``source`` (:func:`chain_policy`).
    """
    norm = torch.from_numpy(np.asarray(params_norm, dtype=np.float32))
    out: dict[str, Any] = {"frames": int(norm.shape[-1]), "frame_rate_hz": MODEL_RATE / HOP_LENGTH, "params": {}}
    for i, p in enumerate(PARAMS):
        values = p.denormalize(norm[i]).numpy().astype(np.float64)
        out["params"][p.name] = {
            "unit": p.unit, "per_frame": p.per_frame, "description": p.description,
            "mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()), "max": float(values.max()),
            "applied": None if p.per_frame else float(p.denormalize(norm[i].mean())),
        }
        if sources is not None:
            out["params"][p.name]["source"] = sources.get(p.name, "forecast")
    return out
