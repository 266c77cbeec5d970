"""Damage made by another effects implementation: a seeded random chain of Spotify's pedalboard.

Our own degrader (:mod:`automaster.degrade`) and the model's inverse chain are the same code, so
an evaluation on our own damage cannot tell whether the model learned *mastering damage* or *our
effects*. This module demasters with pedalboard (JUCE's biquads, compressor, Freeverb and delay
line), drawn from ranges comparable to the ParamSpec table, in the same order as our chain::

    LowShelf -> Peak(low) -> Peak(high) -> HighShelf -> Compressor -> Reverb -> Delay -> Gain
    -> headroom gain (never clipped)

Every draw comes from a numpy generator seeded by ``(seed, track_id)`` (the same seed and track
give byte-identical audio). :attr:`ForeignDegraded.settings` holds pedalboard's own parameters;
:attr:`ForeignDegraded.params` maps them to our parameter names where the meaning matches, so the
forecast error can be reported for those:

=====================  ==================================================================
ours                   pedalboard
=====================  ==================================================================
``eq_low_gain_db``     low PeakFilter ``gain_db`` (both are the gain at the centre)
``eq_low_fc_hz``       low PeakFilter ``cutoff_frequency_hz``
``eq_high_gain_db``    high PeakFilter ``gain_db``
``eq_high_fc_hz``      high PeakFilter ``cutoff_frequency_hz``
``comp_threshold_db``  Compressor ``threshold_db`` (JUCE detects peaks, ours RMS: approximate)
``comp_ratio``         Compressor ``ratio``
``echo_delay_s``       Delay ``delay_seconds`` (rounded down to a sample, as JUCE does)
``echo_gain``          ``mix / (1 - mix)``: the first echo relative to the direct sound
                       (JUCE's delay outputs ``(1 - mix) x + mix d``); feedback adds further,
                       quieter echoes that our single tap does not have
``comp_makeup_db``     Gain ``gain_db`` + ``20 log10(1 - mix)``: the static gain after the
                       compressor, net of the delay's dry level (reverb, delay and gain are
                       linear and time-invariant, so where the static gain sits does not matter)
``output_gain_db``     the headroom gain (<= 0), as in our degrader
=====================  ==================================================================

Not mapped (no counterpart with the same meaning): the PeakFilters' Q (a biquad bandwidth, ours is
a Gaussian width), the shelves, the compressor's attack/release (JUCE ballistics on a peak
detector), the knee (JUCE's is hard), and the reverb (Freeverb has no RT60 or energy-normalised
wet share).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from automaster.degrade import seed_for
from automaster.effects.params import BY_NAME

DEFAULT_PEAK_CEILING = 0.999  # as DegradeConfig.peak_ceiling
# Freeverb's wet output at wet_level 1 carries about 1.4-5x the input's energy (measured on noise
# for room sizes 0.1-0.9); dividing the wet share by sqrt(2.2) puts the wet energy near ours
# (an energy-normalised impulse response times ``reverb_wet``).
_FREEVERB_WET_ENERGY = 2.2
# JUCE's Reverb multiplies dry_level by 2: dry_level 0.5 is unity gain.
_FREEVERB_DRY_SCALE = 2.0

# Ranges (ours where a counterpart exists, from the ParamSpec table).
SHELF_GAIN_DB = (-4.0, 4.0)
LOW_SHELF_HZ = (60.0, 250.0)
HIGH_SHELF_HZ = (4000.0, 12000.0)
SHELF_Q = 0.7071
PEAK_Q = (0.7, 3.0)
REVERB_ROOM = (0.1, 0.7)
REVERB_DAMPING = (0.2, 0.8)
DELAY_FEEDBACK = (0.0, 0.3)
# JUCE's compressor follows the peak envelope, which sits 10-20 dB above a music clip's RMS: a
# threshold this far around the RMS level compresses music by a few LU, like our RMS-detector
# compressor with its threshold 3 dB above to 12 dB below the RMS level.
THRESHOLD_FROM_RMS_DB = (-6.0, 6.0)

MAPPED_PARAMS = (
    "eq_low_gain_db", "eq_low_fc_hz", "eq_high_gain_db", "eq_high_fc_hz", "comp_threshold_db", "comp_ratio",
    "comp_makeup_db", "echo_delay_s", "echo_gain", "output_gain_db",
)


class ForeignDegraderError(RuntimeError):
    """pedalboard is missing or failed on a clip."""


@dataclass
class ForeignDegraded:
    """A clip damaged by pedalboard and what was drawn.

    Attributes:
        audio: ``(C, T)`` float32, peak <= the ceiling.
        settings: pedalboard's own parameters, per effect (plain floats), and ``headroom_gain_db``.
        params: the mapped parameters in our names and units (see the module docstring).
    """

    audio: np.ndarray
    settings: dict[str, dict[str, float]]
    params: dict[str, float]


def _pedalboard():
    try:
        import pedalboard
    except ImportError as exc:  # a dependency, but say what to do if an environment lacks it
        raise ForeignDegraderError("the pedalboard degrader needs the 'pedalboard' package (pip install pedalboard)") from exc
    return pedalboard


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _spec_range(name: str) -> tuple[float, float]:
    spec = BY_NAME[name]
    return spec.low, spec.high


def draw_settings(rng: np.random.Generator, clip_rms_db: float) -> dict[str, dict[str, float]]:
    """Draw one clip's pedalboard settings (plain floats, keyed by effect then argument).

    The compressor threshold sits ``THRESHOLD_FROM_RMS_DB`` around the clip's RMS level (within
    our table's range), so every clip is really compressed, by a few LU.
    """
    wet_share = _uniform(rng, *_spec_range("reverb_wet"))
    echo_gain = _uniform(rng, *_spec_range("echo_gain"))
    mix = echo_gain / (1.0 + echo_gain)
    makeup_db = _uniform(rng, *_spec_range("comp_makeup_db"))
    lo, hi = THRESHOLD_FROM_RMS_DB
    t_lo, t_hi = _spec_range("comp_threshold_db")
    return {
        "low_shelf": {"cutoff_frequency_hz": _log_uniform(rng, *LOW_SHELF_HZ), "gain_db": _uniform(rng, *SHELF_GAIN_DB), "q": SHELF_Q},
        "low_peak": {
            "cutoff_frequency_hz": _log_uniform(rng, *_spec_range("eq_low_fc_hz")),
            "gain_db": _uniform(rng, *_spec_range("eq_low_gain_db")), "q": _log_uniform(rng, *PEAK_Q),
        },
        "high_peak": {
            "cutoff_frequency_hz": _log_uniform(rng, *_spec_range("eq_high_fc_hz")),
            "gain_db": _uniform(rng, *_spec_range("eq_high_gain_db")), "q": _log_uniform(rng, *PEAK_Q),
        },
        "high_shelf": {"cutoff_frequency_hz": _log_uniform(rng, *HIGH_SHELF_HZ), "gain_db": _uniform(rng, *SHELF_GAIN_DB), "q": SHELF_Q},
        "compressor": {
            "threshold_db": float(np.clip(clip_rms_db + _uniform(rng, lo, hi), t_lo, t_hi)),
            "ratio": _log_uniform(rng, *_spec_range("comp_ratio")),
            "attack_ms": _log_uniform(rng, *_spec_range("comp_attack_ms")),
            "release_ms": _log_uniform(rng, *_spec_range("comp_release_ms")),
        },
        "reverb": {
            "room_size": _uniform(rng, *REVERB_ROOM), "damping": _uniform(rng, *REVERB_DAMPING),
            "wet_level": wet_share / math.sqrt(_FREEVERB_WET_ENERGY), "dry_level": (1.0 - wet_share) / _FREEVERB_DRY_SCALE,
            "width": 1.0,
        },
        "delay": {
            "delay_seconds": _log_uniform(rng, *_spec_range("echo_delay_s")),
            "feedback": _uniform(rng, *DELAY_FEEDBACK), "mix": mix,
        },
        # The compressor's makeup, and the level JUCE's delay takes from the dry sound given back,
        # so the direct sound is as loud as in our chain (whose echo adds to an untouched x).
        "gain": {"gain_db": makeup_db - 20.0 * math.log10(1.0 - mix)},
    }


def build_board(settings: dict[str, dict[str, float]]) -> Any:
    """The ``pedalboard.Pedalboard`` of ``settings`` (see :func:`draw_settings`)."""
    pb = _pedalboard()
    return pb.Pedalboard([
        pb.LowShelfFilter(**settings["low_shelf"]),
        pb.PeakFilter(**settings["low_peak"]),
        pb.PeakFilter(**settings["high_peak"]),
        pb.HighShelfFilter(**settings["high_shelf"]),
        pb.Compressor(**settings["compressor"]),
        pb.Reverb(**settings["reverb"]),
        pb.Delay(**settings["delay"]),
        pb.Gain(**settings["gain"]),
    ])


def mapped_params(settings: dict[str, dict[str, float]], sample_rate: int, headroom_gain_db: float) -> dict[str, float]:
    """Our names for what pedalboard drew, where the meaning matches (module docstring)."""
    delay, comp = settings["delay"], settings["compressor"]
    mix = delay["mix"]
    return {
        "eq_low_gain_db": settings["low_peak"]["gain_db"],
        "eq_low_fc_hz": settings["low_peak"]["cutoff_frequency_hz"],
        "eq_high_gain_db": settings["high_peak"]["gain_db"],
        "eq_high_fc_hz": settings["high_peak"]["cutoff_frequency_hz"],
        "comp_threshold_db": comp["threshold_db"],
        "comp_ratio": comp["ratio"],
        "echo_delay_s": int(delay["delay_seconds"] * sample_rate) / sample_rate,
        "echo_gain": mix / (1.0 - mix),
        "comp_makeup_db": settings["gain"]["gain_db"] + 20.0 * math.log10(1.0 - mix),
        "output_gain_db": headroom_gain_db,
    }


def make_rng(seed: int, track_id: str) -> np.random.Generator:
    """A numpy generator seeded by ``(seed, track_id)``; its stream is apart from our degrader's."""
    return np.random.default_rng(seed_for(seed, f"pedalboard:{track_id}"))


def pedalboard_degrade(
    clean: np.ndarray, sample_rate: int, seed: int, track_id: str, peak_ceiling: float = DEFAULT_PEAK_CEILING
) -> ForeignDegraded:
    """Demaster ``clean`` ``(C, T)`` with a pedalboard chain drawn from ``(seed, track_id)``.

    The output keeps the input's shape; when its peak exceeds ``peak_ceiling`` a static gain
    brings it there (recorded as ``settings["headroom_gain_db"]`` and in ``output_gain_db``),
    never a clip.

    Raises:
        ValueError: not ``(C, T)`` finite audio, or a non-positive sample rate.
        ForeignDegraderError: pedalboard is not installed.
    """
    clean = np.asarray(clean, dtype=np.float32)
    if clean.ndim != 2 or clean.shape[0] < 1 or clean.shape[1] < 1:
        raise ValueError(f"expected (C, T) audio, got shape {clean.shape}")
    if not np.isfinite(clean).all():
        raise ValueError("audio contains NaN/Inf")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    rms = float(np.sqrt(np.mean(np.square(clean, dtype=np.float64))))
    settings = draw_settings(make_rng(seed, track_id), 20.0 * math.log10(max(rms, 1e-12)))
    # reset=True (the default): no state carries over from a previous clip.
    wet = np.asarray(build_board(settings)(np.ascontiguousarray(clean), float(sample_rate)), dtype=np.float32)
    if not np.isfinite(wet).all():
        raise ForeignDegraderError("pedalboard produced NaN/Inf samples")
    peak = float(np.max(np.abs(wet)))
    headroom_db = min(0.0, 20.0 * math.log10(peak_ceiling / peak)) if peak > 0 else 0.0
    if headroom_db < 0.0:
        wet = (wet * np.float32(10.0 ** (headroom_db / 20.0))).astype(np.float32)
        np.clip(wet, -peak_ceiling, peak_ceiling, out=wet)  # float rounding only: the gain did the work
    settings["headroom_gain_db"] = {"gain_db": headroom_db}
    return ForeignDegraded(audio=wet, settings=settings, params=mapped_params(settings, int(sample_rate), headroom_db))
