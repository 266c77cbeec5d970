"""The stages after restoration: reference match -> amount blend -> loudness -> true-peak limiter -> no clip.

    settings = FinishSettings(preset="streaming", amount=0.8, reference=tone_profile(ref, ref_sr))
    out, report = finish(original, restored, sample_rate, settings)

``original`` is the input and ``restored`` the restoration's output, both ``(C, T)`` float32 at
``sample_rate``, aligned sample for sample. The stages, each recorded in ``report["stages"]``
with what it did and the loudness (LUFS) and true peak (dBTP) after it:

1. ``restore``: the restoration (done before; recorded here with its levels).
2. ``reference``: :func:`automaster.dsp.tone.match_tone` when a reference is given.
3. ``amount``: ``amount * processed + (1 - amount) * original``; ``amount == 0`` is the input.
4. ``loudness``: a static gain to the target (:mod:`automaster.mastering.presets`); the
   ``restore`` preset keeps the level, or applies ``level_gain_db`` (the restoration model's
   estimate of the original master's level) when given, scaled by ``amount`` (0 dB leaves the
   audio untouched); either way the gain stops where the limiter would cut peaks by more than
   ``settings.max_limiting_db`` (:data:`automaster.config.MAX_LIMITING_DB`; a result further over
   the ceiling is turned down instead: a static gain, no distortion). Other presets ignore it.
   A gain above ``MAX_GAIN_DB`` is refused with a note (the ceiling still applies). A target too loud for the limiter alone
   (dynamic music at a club level) is reached with a soft clipper before the limiter.
5. ``limiter``: the true-peak limiter, aimed ``TRUE_PEAK_MARGIN_DB`` under the ceiling (8x meter); reports its largest
   gain reduction and a gain-reduction curve.
6. ``ceiling``: nothing above full scale is written: without a ceiling, a result peaking above
   0 dBFS gets a static gain to ``HEADROOM_PEAK_DBFS``.

Silence passes through every stage unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from automaster.config import MAX_LIMITING_DB
from automaster.dsp import loudness as meter
from automaster.dsp.limiter import MASTER_LOUDNESS_AIM_LU, RELEASE_SNAP_DB, _Stage, loudness_and_limit, true_peak_limit
from automaster.dsp.tone import MAX_EQ_DB, ToneProfile, match_tone
from automaster.mastering.levels import HEADROOM_PEAK_DBFS, abs_max, finite_or_none, peak_dbfs
from automaster.mastering.presets import Levels, resolve_levels

MAX_GAIN_DB = 24.0  # a loudness gain above this is refused (a near-silent file or a wrong target)
LOUDNESS_TOLERANCE_LU = 0.15  # a loudness stage this far off its target gets a second aim
GAIN_REDUCTION_HOP_S = 0.01  # resolution of the reported gain-reduction curve
MAX_DRIVE_DB = 12.0  # soft-clipper drive searched this far either side of plain normalisation's gain
SATURATION_STEPS = 12  # bisection steps of the soft clipper's drive
_BOUND_MARGIN_DB = 1e-3  # the level gain's bound stops this short of it (float32 rounding)
# The limiter aims this far under the ceiling. Its 8x meter reads the limited result at the aim,
# but other meters interpolate differently: on a master limited to -1.001 dBTP at 8x, a 16x
# windowed sinc read -0.96, ffmpeg's ebur128 (swr to 192 kHz) -0.92 and soxr -0.90. With the
# margin the ceiling holds for them too (BENCHMARKS "True peak against other meters").
TRUE_PEAK_MARGIN_DB = 0.1


def limiter_aim(ceiling_dbtp: float | None) -> float | None:
    """Where the limiter (and the soft clipper) act for a ceiling: ``TRUE_PEAK_MARGIN_DB`` under it."""
    return None if ceiling_dbtp is None else ceiling_dbtp - TRUE_PEAK_MARGIN_DB


@dataclass(frozen=True)
class FinishSettings:
    """What the user asked for: a preset (None: the default), overrides, amount, reference and the
    bound of the reference-matching EQ (dB, either way, mid and side)."""

    preset: str | None = None
    target_lufs: float | None = None
    true_peak_dbtp: float | None = None
    amount: float = 1.0
    reference: ToneProfile | None = None
    max_limiting_db: float | None = MAX_LIMITING_DB  # the restore preset's bound on limiting (None: none)
    max_eq_db: float = MAX_EQ_DB

    def __post_init__(self) -> None:
        if not (0.0 <= self.amount <= 1.0):
            raise ValueError(f"--amount must be in [0, 1], got {self.amount}")
        if self.max_limiting_db is not None and not self.max_limiting_db >= 0:  # NaN included
            raise ValueError(f"max_limiting_db must be >= 0, got {self.max_limiting_db}")
        if not (math.isfinite(self.max_eq_db) and self.max_eq_db > 0):
            raise ValueError(f"--max-eq-db must be a finite number > 0, got {self.max_eq_db}")
        self.levels()  # an unknown preset fails here, at setup

    def levels(self) -> Levels:
        ref_lufs = self.reference.lufs if self.reference is not None and math.isfinite(self.reference.lufs) else None
        return resolve_levels(self.preset, self.target_lufs, self.true_peak_dbtp, ref_lufs)


def _measure(audio: np.ndarray, sr: int) -> dict[str, float | None]:
    return {"lufs": finite_or_none(meter.integrated_loudness(audio, sr)),
            "true_peak_dbtp": finite_or_none(meter.true_peak_dbtp(audio, sr))}


def gain_reduction_db(before: np.ndarray, after: np.ndarray, sample_rate: int, hop_s: float = GAIN_REDUCTION_HOP_S,
                      before_gain_db: float = 0.0) -> np.ndarray:
    """The limiter's gain (dB, <= 0) per ``hop_s`` window, from its input (``before`` times
    ``before_gain_db``) and output ``(C, T)``.

    The limiter applies one gain to all channels, so ``after / before`` at the window's largest
    input sample is that gain; silent windows read 0 dB. Computed a block of windows at a time:
    no temporary the size of the audio.
    """
    hop = max(1, int(round(hop_s * sample_rate)))
    windows = before.shape[-1] // hop
    if windows == 0:
        return np.zeros(0, np.float32)
    out = np.empty(windows, np.float32)
    step = max(1, (1 << 18) // hop)  # windows per block
    g = 10.0 ** (before_gain_db / 20.0)
    for w0 in range(0, windows, step):
        w1 = min(windows, w0 + step)
        b_blk, a_blk = before[:, w0 * hop : w1 * hop], after[:, w0 * hop : w1 * hop]
        env = np.abs(b_blk).max(axis=0).reshape(-1, hop)  # (W, hop)
        idx = env.argmax(axis=1) + np.arange(env.shape[0]) * hop
        ch = np.abs(b_blk[:, idx]).argmax(axis=0)
        b = b_blk[ch, idx].astype(np.float64) * g
        a = a_blk[ch, idx].astype(np.float64)
        ratio = np.where(np.abs(b) > 1e-9, np.abs(a) / np.maximum(np.abs(b), 1e-30), 1.0)
        out[w0:w1] = np.minimum(20.0 * np.log10(np.maximum(ratio, 1e-6)), 0.0)
    # Less than the limiter's snap is the gain's float32 rounding, not a reduction: a render the
    # limiter never touched reads exactly 0 dB (it was reported as "limiter <0.1 dB").
    out[out > -RELEASE_SNAP_DB] = 0.0
    return out


def _stage(name: str, applied: bool, note: str, audio: np.ndarray, sr: int, prev: dict[str, Any] | None = None,
           **extra: Any) -> dict[str, Any]:
    """A stage's record with the levels after it: a stage that did not apply keeps ``prev``'s
    (the audio is the same), so only a stage that changed the audio is measured."""
    if prev is not None and not applied:
        levels = {k: prev[k] for k in ("lufs", "true_peak_dbtp", "peak_dbfs")}
    else:
        levels = {**_measure(audio, sr), "peak_dbfs": peak_dbfs(audio)}
    return {"stage": name, "applied": applied, "note": note, **levels, **extra}


def level_gain_bound_db(true_peak_dbtp: float | None, ceiling_dbtp: float | None, max_limiting_db: float | None) -> float:
    """The largest level gain (dB) after which the true-peak limiter at ``ceiling_dbtp`` cuts
    peaks of audio at ``true_peak_dbtp`` by at most ``max_limiting_db``: negative when it is
    already further over the ceiling (it is turned down, a static gain, instead of limited); inf
    without a ceiling, a bound or a peak (silence)."""
    if ceiling_dbtp is None or max_limiting_db is None or true_peak_dbtp is None or not math.isfinite(true_peak_dbtp):
        return math.inf
    # 0.001 dB short: the gained float32 samples' rounding must not land a peak above the ceiling
    return ceiling_dbtp + max_limiting_db - true_peak_dbtp - _BOUND_MARGIN_DB


def _loudness_stage(
    prev: dict[str, Any], levels: Levels, gain_db: float | None, max_limiting_db: float | None = None,
    short: bool = False,
) -> tuple[float | None, str]:
    """The target (LUFS) the loudness stage aims at, or None, and its note (``prev``: the record
    of the stage before, whose loudness and true peak it starts from; ``short``: the clip is
    shorter than one 400 ms loudness block, whose loudness BS.1770 does not define)."""
    lufs = prev["lufs"]
    if lufs is None or not math.isfinite(lufs):
        return None, "silent: no loudness gain"
    if short:
        return None, "too short to measure loudness (under one 400 ms block): level kept"
    if levels.use_level_gain:
        # The restore preset: the restored level, moved by the level model's gain when there is
        # one, and never into more than max_limiting_db of limiting (a static gain costs no distortion).
        note = ("restore preset without a level model: kept the restored level" if gain_db is None
                else f"level model: the original master's level as estimated, {gain_db:+.1f} dB")
        gain_db = 0.0 if gain_db is None else gain_db
        bound = level_gain_bound_db(prev["true_peak_dbtp"], limiter_aim(levels.ceiling_dbtp), max_limiting_db)
        if gain_db > bound:
            gain_db = bound
            note = f"{note}; {bound:+.1f} dB so that the limiter cuts at most {max_limiting_db:.1f} dB"
        elif gain_db == 0.0:  # no gain (or amount 0): the same path as none, so the audio is untouched
            return None, note if note.endswith("level") else f"{note} (level kept)"
        target = lufs + gain_db
    elif levels.target_lufs is None:
        return None, "no loudness target"
    else:
        target, note = levels.target_lufs, f"{levels.target_lufs:.1f} LUFS ({levels.loudness_from})"
    if target - lufs > MAX_GAIN_DB:  # turning down is always safe; raising this much is not
        return None, f"refused: {target - lufs:+.1f} dB is beyond +{MAX_GAIN_DB:.0f} dB (level kept)"
    return target, note


def loudness_source(levels: Levels, level_gain_db: float | None, target: float | None) -> str | None:
    """What set the loudness stage's target: the level model (a level gain was given), the
    ``restore`` preset's bound on limiting (no level model: the gain only turns a hot input down),
    a preset, a target or a reference; None without a target."""
    if target is None:
        return None
    if levels.use_level_gain:
        return "level model" if level_gain_db is not None else "limiting bound"
    return levels.loudness_from


def soft_clip(audio: np.ndarray, gain_db: float, ceiling_dbtp: float) -> np.ndarray:
    """``c * tanh(g * x / c)`` with ``c`` the ceiling (linear), 4x oversampled so the harmonics
    it makes above Nyquist are filtered out rather than aliased."""
    import scipy.signal  # only the soft clipper needs it: not loaded at import

    c = 10.0 ** (ceiling_dbtp / 20.0)
    up = scipy.signal.resample_poly(audio * (10.0 ** (gain_db / 20.0) / c), 4, 1, axis=-1)
    return (c * scipy.signal.resample_poly(np.tanh(up), 1, 4, axis=-1)).astype(np.float32)


def _saturate_to(y: np.ndarray, sr: int, target: float, ceiling: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Loudness the limiter alone cannot reach: a soft clipper before it, its drive (gain into
    the clipper, dB) bisected within +-``MAX_DRIVE_DB`` of plain normalisation's gain until the
    limited result is within ``MASTER_LOUDNESS_AIM_LU`` of ``target``.
    Returns ``(limited, clipped, drive_db)``, the pass closest to the target."""
    base = target - meter.integrated_loudness(y, sr)
    lo, hi = base - MAX_DRIVE_DB, base + MAX_DRIVE_DB
    best: tuple[float, np.ndarray, np.ndarray, float] | None = None
    for _ in range(SATURATION_STEPS):
        drive = hi if best is None else 0.5 * (lo + hi)  # the loudest first: is the target reachable?
        clipped = soft_clip(y, drive, ceiling)
        out = true_peak_limit(clipped, sr, ceiling)
        error = target - meter.integrated_loudness(out, sr)
        if best is None or abs(error) < best[0]:
            best = (abs(error), out, clipped, drive)
        if abs(error) <= MASTER_LOUDNESS_AIM_LU or (drive == hi and error > 0):
            break
        lo, hi = (drive, hi) if error > 0 else (lo, drive)
    _, out, clipped, drive = best
    return out, clipped, drive


def _loudness_and_limit(stage, target: float | None, ceiling: float | None, saturate) -> tuple:
    """Gain to ``target`` and the true-peak limiter (:func:`~automaster.dsp.limiter.loudness_and_limit`
    on ``stage``, the measured input); aimed again once (at the target plus the miss) when heavy
    limiting left it more than ``LOUDNESS_TOLERANCE_LU`` short, and, if the limiter alone still
    cannot get there, with a soft clipper before it (``saturate()``: :func:`_saturate_to`'s
    ``(limited, clipped, drive_db)``).

    Returns ``(output, the clipper's output or None, gain_db, clipper drive_db or None, the
    output's levels as the limiter measured them or None)``; without the clipper the limiter's
    input is the stage's input at ``gain_db``.
    """
    out, stats = loudness_and_limit(stage, target, ceiling)
    gain = float(stats["gain_db"]) if math.isfinite(stats["gain_db"]) else 0.0
    miss = None if target is None or ceiling is None else target - stats["lufs_after"]
    if miss is None or not math.isfinite(miss) or abs(miss) <= LOUDNESS_TOLERANCE_LU:
        return out, None, gain, None, _levels_of(stats)
    out = None  # the first pass goes before the second is rendered (memory)
    out2, stats2 = loudness_and_limit(stage, target + miss, ceiling)
    if abs(target - stats2["lufs_after"]) < abs(miss):
        stats, miss = stats2, target - stats2["lufs_after"]
        gain = float(stats["gain_db"])
    else:
        out2, stats = loudness_and_limit(stage, None, ceiling, gain_db=gain)  # the first pass again, deterministic
    if miss <= LOUDNESS_TOLERANCE_LU:
        return out2, None, gain, None, _levels_of(stats)
    out2 = None
    out, clipped, drive = saturate()
    return out, clipped, drive, drive, None


def _levels_of(stats: dict[str, Any]) -> dict[str, float | None]:
    """:func:`master_loudness`'s measurement of its output as a stage's levels."""
    return {"lufs": finite_or_none(stats["lufs_after"]), "true_peak_dbtp": finite_or_none(stats["true_peak_after_dbtp"])}


def _shifted(prev: dict[str, Any], gain_db: float) -> dict[str, Any]:
    """The levels of ``prev``'s audio times a static gain: every level moves by the gain exactly."""
    return {k: None if prev[k] is None else prev[k] + gain_db for k in ("lufs", "true_peak_dbtp", "peak_dbfs")}


def _reference_stage(y: np.ndarray, sr: int, settings: FinishSettings, report: dict[str, Any]) -> np.ndarray:
    if settings.reference is None or settings.amount == 0:
        report["stages"].append(_stage("reference", False, "no reference" if settings.amount > 0 else "amount 0", y, sr,
                                       prev=report["stages"][-1]))
        return y
    y, tone = match_tone(y, sr, settings.reference, settings.max_eq_db)
    report["tone"] = tone
    note = tone.get("note") or (f"mid EQ {tone['mid_eq_db'][0]:+.1f}..{tone['mid_eq_db'][1]:+.1f} dB, "
                                f"side EQ {tone['side_eq_db'][0]:+.1f}..{tone['side_eq_db'][1]:+.1f} dB "
                                f"(bound +-{tone['max_eq_db']:g} dB)")
    report["stages"].append(_stage("reference", bool(tone["applied"]), note, y, sr))
    return y


def _amount_stage(y: np.ndarray, original: np.ndarray, sr: int, amount: float, report: dict[str, Any]) -> np.ndarray:
    note = f"{amount:.2f} processed + {1 - amount:.2f} input"
    if amount == 0.0:
        y = original.copy()  # exactly the input, whose levels are known
        report["stages"].append({"stage": "amount", "applied": True, "note": note, **report["input"]})
        return y
    if amount < 1.0:
        y = (np.float32(amount) * y + np.float32(1.0 - amount) * original).astype(np.float32)
    report["stages"].append(_stage("amount", amount < 1.0, note, y, sr, prev=report["stages"][-1]))
    return y


def _level_stages(
    y: np.ndarray, sr: int, levels: Levels, level_gain_db: float | None, report: dict[str, Any],
    max_limiting_db: float | None = None,
) -> np.ndarray:
    """The loudness stage, the soft clipper when the limiter alone fell short, and the limiter
    (records each, so the clipper's share of the loudness shows as a stage of its own);
    ``max_limiting_db`` bounds the ``restore`` preset's level gain (:func:`level_gain_bound_db`)."""
    stages, ceiling = report["stages"], levels.ceiling_dbtp
    short = y.shape[-1] < meter.BLOCK_S * sr
    target, note = _loudness_stage(stages[-1], levels, level_gain_db, max_limiting_db, short)
    report["target_lufs"] = target
    report["loudness_from"] = loudness_source(levels, level_gain_db, target)
    if target is None and ceiling is None:
        stages.append(_stage("loudness", False, note, y, sr, prev=stages[-1]))
        stages.append(_stage("limiter", False, "no ceiling (preset none)", y, sr, prev=stages[-1]))
        return y
    aim = limiter_aim(ceiling)
    stage = _Stage(y, sr, y.dtype, aim)  # measured once for every pass
    if levels.use_level_gain and target is not None and max_limiting_db is not None:
        # the bounded level gain, once: no second aim, no soft clipper (they would limit harder)
        gain = target - stages[-1]["lufs"]
        out, stats = loudness_and_limit(stage, None, aim, gain_db=gain)
        clipped, drive, measured = None, None, _levels_of(stats)
    else:
        out, clipped, gain, drive, measured = _loudness_and_limit(
            stage, target, aim, lambda: _saturate_to(y, sr, target, aim))
    limiter_input = y if clipped is None else clipped
    report["loudness_gain_db"], report["soft_clip_drive_db"] = gain, drive
    if target is not None:
        note = f"{note}: {gain:+.2f} dB" + ("" if drive is None else " into the soft clipper (the limiter alone fell short)")
    if drive is None:
        stages.append({"stage": "loudness", "applied": target is not None, "note": note, **_shifted(stages[-1], gain)})
    else:  # the linear gain, then the clipper's own share
        stages.append(_stage("loudness", True, note, y * np.float32(10.0 ** (drive / 20.0)), sr))
        stages.append(_stage("soft clip", True, f"tanh soft clipper at the {ceiling:.1f} dBTP ceiling, driven {drive:+.2f} dB",
                             limiter_input, sr))
    y = np.ascontiguousarray(out, dtype=np.float32)
    input_gain = 0.0 if drive is not None else gain  # the clipper's output has its drive in it
    gr = gain_reduction_db(limiter_input, y, sr, before_gain_db=input_gain) if ceiling is not None else np.zeros(0, np.float32)
    record = limiter_record(report, gr, levels)
    if measured is not None:  # the limiter measured its output: no second pass over it
        stages.append({**record, **measured, "peak_dbfs": peak_dbfs(y)})
    else:
        stages.append(_stage("limiter", record["applied"], record["note"], y, sr))
    return y


def limiter_record(report: dict[str, Any], gr: np.ndarray, levels: Levels) -> dict[str, Any]:
    """The limiter's figures into ``report`` from its gain-reduction curve ``gr``, and its stage
    record without the levels (``stage``, ``applied``, ``note``)."""
    ceiling = levels.ceiling_dbtp
    report["gain_reduction_db"] = gr
    report["limiter_max_reduction_db"] = max(0.0, float(-gr.min())) if gr.size else 0.0
    report["limiter_mean_reduction_db"] = max(0.0, float(-gr.mean())) if gr.size else 0.0
    note = "no ceiling" if ceiling is None else (
        f"ceiling {ceiling:.1f} dBTP ({levels.ceiling_from}), max gain reduction {report['limiter_max_reduction_db']:.2f} dB")
    return {"stage": "limiter", "applied": ceiling is not None and report["limiter_max_reduction_db"] > 0, "note": note}


def _ceiling_stage(y: np.ndarray, sr: int, report: dict[str, Any]) -> np.ndarray:
    peak = abs_max(y)
    if peak <= 1.0:
        report["stages"].append(_stage("ceiling", False, "no sample above 0 dBFS", y, sr, prev=report["stages"][-1]))
        return y
    g = 10.0 ** (HEADROOM_PEAK_DBFS / 20.0) / peak
    y = y * np.float32(g)
    report["headroom_gain_db"] = 20.0 * math.log10(g)
    report["stages"].append(_stage("ceiling", True, f"peaked above 0 dBFS: {report['headroom_gain_db']:+.2f} dB", y, sr))
    return y


def finish(
    original: np.ndarray, restored: np.ndarray, sample_rate: int, settings: FinishSettings,
    level_gain_db: float | None = None, restore_note: str = "restoration", restore_applied: bool | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the stages after restoration; returns ``(audio (C, T) float32, report)``.

    ``report``: ``stages`` (per stage: ``stage``, ``applied``, ``note``, and ``lufs``,
    ``true_peak_dbtp``, ``peak_dbfs`` after it), ``target_lufs``, ``ceiling_dbtp``, ``amount``,
    ``loudness_gain_db``, ``soft_clip_drive_db``, ``gain_reduction_db`` (curve,
    ``GAIN_REDUCTION_HOP_S`` apart), ``limiter_max_reduction_db``, ``limiter_mean_reduction_db``,
    ``headroom_gain_db``, ``tone`` (the reference match's info) and ``applied`` (in words).
    """
    sr = int(sample_rate)
    original = np.ascontiguousarray(original, dtype=np.float32)
    y = np.ascontiguousarray(restored, dtype=np.float32)
    if original.shape != y.shape:
        raise ValueError(f"original and restored differ in shape: {original.shape} vs {y.shape}")
    levels = settings.levels()
    report: dict[str, Any] = {
        "stages": [], "target_lufs": None, "ceiling_dbtp": levels.ceiling_dbtp, "amount": settings.amount,
        "loudness_gain_db": 0.0, "soft_clip_drive_db": None, "gain_reduction_db": np.zeros(0, np.float32),
        "limiter_max_reduction_db": 0.0, "limiter_mean_reduction_db": 0.0, "headroom_gain_db": 0.0, "tone": None,
    }
    restored = settings.amount > 0 if restore_applied is None else bool(restore_applied and settings.amount > 0)
    report["input"] = {**_measure(original, sr), "peak_dbfs": peak_dbfs(original)}  # measured once
    report["stages"].append(_stage("restore", restored, restore_note, y, sr, prev=report["input"]))
    y = _reference_stage(y, sr, settings, report)
    y = _amount_stage(y, original, sr, settings.amount, report)
    gain = None if level_gain_db is None else settings.amount * level_gain_db
    y = _level_stages(y, sr, levels, gain, report, settings.max_limiting_db)
    y = _ceiling_stage(y, sr, report)
    report["applied"] = _applied(report)
    return y, report


def _applied(report: dict[str, Any]) -> str:
    """What was done, by which stage, in a few words for the end-of-job table
    (``echo removed (120 ms), level model +4.8 dB, limiter 1.2 dB``)."""
    done = {s["stage"]: s for s in report["stages"] if s["applied"]}
    parts = [done["restore"]["note"]] if "restore" in done else []
    if "reference" in done:
        parts.append("reference EQ")
    if "amount" in done:
        parts.append(f"amount {report['amount']:.2f}")
    if "loudness" in done:
        source = report.get("loudness_from")
        how = {"level model": "level model", "limiting bound": "level"}.get(source, f"to {report['target_lufs']:.1f} LUFS")
        parts.append(f"{how} {report['loudness_gain_db']:+.1f} dB")
    if "soft clip" in done:
        parts.append("soft clip")
    if "limiter" in done:
        cut = report["limiter_max_reduction_db"]
        parts.append(f"limiter {cut:.1f} dB" if cut >= 0.05 else "limiter <0.1 dB")
    if "ceiling" in done:
        parts.append(f"trim {report['headroom_gain_db']:+.1f} dB")
    return ", ".join(parts) or "nothing (input unchanged)"


def loudness_warning(report: dict[str, Any]) -> str:
    """The loudness stage's note of a :func:`finish` report when a user should read it (silence,
    a refused gain, the soft clipper), else ``""``."""
    note = next(s for s in report["stages"] if s["stage"] == "loudness")["note"]
    if note.startswith(("silent", "refused", "too short")) or report.get("soft_clip_drive_db") is not None:
        return note
    return ""


def levels_info(original: np.ndarray, sample_rate: int, report: dict[str, Any]) -> dict[str, Any]:
    """Flat levels of a :func:`finish` run for summaries: ``lufs_before/after``,
    ``true_peak_before/after_dbtp``, ``peak_before/after_dbfs``, the gains, target, ceiling,
    largest gain reduction, ``loudness_note`` (the loudness stage's note when it is a warning:
    silence, a refused gain, the soft clipper; else empty) and ``applied``."""
    last = report["stages"][-1]
    before = report.get("input") or {**_measure(original, sample_rate), "peak_dbfs": peak_dbfs(original)}
    return {
        "lufs_before": before["lufs"], "true_peak_before_dbtp": before["true_peak_dbtp"], "peak_before_dbfs": before["peak_dbfs"],
        "lufs_after": last["lufs"], "true_peak_after_dbtp": last["true_peak_dbtp"], "peak_after_dbfs": last["peak_dbfs"],
        "loudness_gain_db": report["loudness_gain_db"], "headroom_gain_db": report["headroom_gain_db"],
        "loudness_note": loudness_warning(report), "target_lufs": report["target_lufs"], "ceiling_dbtp": report["ceiling_dbtp"],
        "limiter_max_reduction_db": report["limiter_max_reduction_db"],
        "limiter_mean_reduction_db": report["limiter_mean_reduction_db"], "applied": report["applied"],
    }
