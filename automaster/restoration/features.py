"""Scale-free statistics of a clip's waveform that reveal compression (issue 21).

A compressor acts on the envelope: it lowers the loud part of the level distribution, shrinks
short-term fluctuations where the level is high, and shapes how the level rises (attack) and
falls (release). So the features are, from the channel-linked power ``mean_c x^2`` (what the
compressor's detector sees):

* level quantiles, spread and peak of the full-band envelope at 5, 50 and 500 ms blocks, and a
  histogram of the 50 ms level (3 dB bins), all in dB relative to the clip's RMS;
* per band (four bands from one rfft of non-overlapping 1024-sample frames): the band's share of
  the power, and its level quantiles at ~23 and ~230 ms relative to the band's mean;
* envelope rise/fall statistics: quantiles of the 5 ms level's change over lags of 5 to 320 ms;
* level-conditional modulation: the mean absolute 5 ms and 40 ms change of the level within each
  quintile of the 50 ms level (compression flattens the top quintiles).

Every feature is a difference of dB values, so a gain on the clip does not change them (up to the
silence floor). About 10 ms of CPU per 30 s of stereo at 44.1 kHz (BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np

BLOCK_S = 0.005  # finest full-band envelope block
COARSER = (10, 100)  # 50 ms and 500 ms blocks, in 5 ms blocks
BAND_FRAME = 1024  # samples per band frame (~23 ms at 44.1 kHz)
BAND_COARSE = 10  # ~230 ms band blocks
BAND_EDGES_HZ = (250.0, 1500.0, 6000.0)  # four bands: below, between, above
LEVEL_Q = (1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0)
BAND_Q = (5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
SLOPE_LAGS = (1, 2, 4, 8, 16, 32, 64)  # in 5 ms blocks
SLOPE_Q = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
HIST_EDGES_DB = np.arange(-30.0, 15.1, 3.0)
FLOOR_DB = -60.0  # relative levels are floored here: silence would otherwise dominate every quantile
_EPS = 1e-20
MIN_SECONDS = 1.0


def _db(power: np.ndarray, ref_db: float) -> np.ndarray:
    return np.maximum(10.0 * np.log10(power + _EPS) - ref_db, FLOOR_DB)


def _blocks(power: np.ndarray, size: int) -> np.ndarray:
    n = len(power) // size
    return power[: n * size].reshape(n, size).mean(axis=1)


def _level_stats(level_db: np.ndarray, quantiles: tuple[float, ...]) -> list[float]:
    return [*np.percentile(level_db, quantiles), float(level_db.std()), float(level_db.max())]


def _band_powers(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """``(4, F)`` power per band of non-overlapping frames, averaged over channels."""
    n = x.shape[-1] // BAND_FRAME
    frames = x[:, : n * BAND_FRAME].reshape(x.shape[0], n, BAND_FRAME)
    spec = np.fft.rfft(frames, axis=-1)
    power = (spec.real**2 + spec.imag**2).mean(axis=0)  # (F, bins)
    freqs = np.fft.rfftfreq(BAND_FRAME, 1.0 / sample_rate)
    cuts = [0, *np.searchsorted(freqs, BAND_EDGES_HZ), len(freqs)]
    return np.stack([power[:, a:b].sum(axis=1) for a, b in zip(cuts[:-1], cuts[1:])])


def waveform_features(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The feature vector ``(N_FEATURES,)`` float32 of ``(C, T)`` or ``(T,)`` audio (see module doc).

    Raises:
        ValueError: audio of another shape, or shorter than one second.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"expected (C, T) or (T,) audio, got shape {x.shape}")
    if x.shape[-1] < MIN_SECONDS * sample_rate:
        raise ValueError(f"expected at least {MIN_SECONDS} s of audio, got {x.shape[-1]} samples at {sample_rate} Hz")
    power = np.square(x, dtype=np.float64).mean(axis=0) if x.shape[0] > 1 else np.square(x[0], dtype=np.float64)
    ref_db = 10.0 * np.log10(power.mean() + _EPS)
    feats: list[float] = [10.0 * np.log10(power.max() + _EPS) - ref_db]  # sample crest factor

    block = max(1, round(BLOCK_S * sample_rate))
    e5 = _blocks(power, block)
    l5 = _db(e5, ref_db)
    feats += _level_stats(l5, LEVEL_Q)
    coarse = {}
    for k in COARSER:
        coarse[k] = _db(_blocks(e5, k), ref_db)
        feats += _level_stats(coarse[k], LEVEL_Q)
    l50 = coarse[COARSER[0]]
    hist, _ = np.histogram(np.clip(l50, HIST_EDGES_DB[0], HIST_EDGES_DB[-1]), bins=HIST_EDGES_DB)
    feats += list(hist / max(len(l50), 1))

    bands = _band_powers(x, sample_rate)
    total = bands.sum() + _EPS
    for band in bands:
        band_ref = 10.0 * np.log10(band.mean() + _EPS)
        feats.append(10.0 * np.log10(band.sum() / total + _EPS))
        feats += _level_stats(_db(band, band_ref), BAND_Q)
        feats += _level_stats(_db(_blocks(band, BAND_COARSE), band_ref), BAND_Q)

    for lag in SLOPE_LAGS:
        d = l5[lag:] - l5[:-lag]
        feats += [*np.percentile(d, SLOPE_Q), float(d.std())]

    # Modulation depth by level quintile: each 5 ms block takes the quintile of its 50 ms block.
    k = COARSER[0]
    n = len(l50) * k
    rank = np.repeat(np.searchsorted(np.percentile(l50, (20, 40, 60, 80)), l50), k)
    for lag in (1, 8):
        d = np.abs(l5[lag:n] - l5[: n - lag])
        r = rank[: n - lag]
        feats += [float(d[r == q].mean()) if np.any(r == q) else 0.0 for q in range(5)]
    return np.asarray(feats, dtype=np.float32)


N_FEATURES = int(waveform_features(np.random.default_rng(0).standard_normal(44100), 44100).shape[0])


def _group_sizes() -> dict[str, int]:
    """How many features each group of :func:`waveform_features` adds, in the order it adds them."""
    level = 1 + (1 + len(COARSER)) * (len(LEVEL_Q) + 2) + len(HIST_EDGES_DB) - 1
    bands = len(BAND_EDGES_HZ) + 1
    return {
        "level": level,  # sample crest, 5/50/500 ms level statistics, the 50 ms histogram
        "bands": bands * (1 + 2 * (len(BAND_Q) + 2)),
        "slopes": len(SLOPE_LAGS) * (len(SLOPE_Q) + 1),
        "modulation": 2 * 5,
    }


FEATURE_GROUPS: dict[str, slice] = {}
_start = 0
for _name, _size in _group_sizes().items():
    FEATURE_GROUPS[_name] = slice(_start, _start + _size)
    _start += _size
assert _start == N_FEATURES, (_start, N_FEATURES)


def feature_index(spec: str) -> np.ndarray:
    """Column indices of a feature set: ``"all"`` or groups of :data:`FEATURE_GROUPS` joined by ``+``
    (``"level+slopes"``), in the vector's order.

    Raises:
        ValueError: an unknown group name.
    """
    if spec == "all":
        return np.arange(N_FEATURES)
    names = spec.split("+")
    unknown = [n for n in names if n not in FEATURE_GROUPS]
    if unknown or not spec:
        raise ValueError(f"unknown feature group {unknown or [spec]}: expected 'all' or groups of {list(FEATURE_GROUPS)} joined by '+'")
    return np.concatenate([np.arange(N_FEATURES)[FEATURE_GROUPS[n]] for n in FEATURE_GROUPS if n in names])
