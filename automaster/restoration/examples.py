"""Examples for the compressor detector/estimator: crops of clean songs, damaged, as feature rows.

One song gives ``crops`` mono crops of ``seconds`` at offsets drawn from ``(seed, track, crop)``,
each damaged as :func:`automaster.restoration.compression.make_example` draws it. A set of
examples is a dict of arrays (the format of :func:`save_examples`, an ``.npz``):

* ``features`` ``(N, N_FEATURES)`` float32, ``kinds`` ``(N,)`` str (``compressor``, ``clean``, ...),
* ``targets`` ``(N, len(TARGETS))`` float32 (NaN where not compressed), ``track`` and ``key`` ``(N,)`` str.

Rows are sorted by ``key`` (``track:crop``), so a set is the same whatever the parallelism.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from automaster.degrade import seed_for
from automaster.restoration.compression import TARGETS, make_example
from automaster.restoration.features import N_FEATURES

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
MIN_RMS_DB = -50.0  # crops quieter than this are skipped (silence teaches nothing)
KEYS = ("features", "kinds", "targets", "track", "key")


def crops_of(path: str, track_id: str, seed: int, n_crops: int, seconds: float) -> list[tuple[str, np.ndarray]]:
    """``(key, (1, T) crop)`` pairs of one song: ``n_crops`` offsets drawn from ``(seed, track, crop)``;
    none when the song is shorter than ``seconds``; silent crops are left out.

    Raises:
        automaster.audio.AudioError: the file cannot be decoded.
    """
    from automaster.audio import read_audio

    audio, _ = read_audio(path, sample_rate=SAMPLE_RATE, mono=True)
    length = int(seconds * SAMPLE_RATE)
    if audio.shape[-1] < length:
        return []
    out = []
    for k in range(n_crops):
        key = f"{track_id}:{k}"
        start = int(np.random.default_rng(seed_for(seed, key)).integers(0, audio.shape[-1] - length + 1))
        crop = audio[:, start : start + length]
        if 10 * math.log10(float(np.mean(crop.astype(np.float64) ** 2)) + 1e-30) > MIN_RMS_DB:
            out.append((key, crop))
    return out


def empty_examples() -> dict[str, np.ndarray]:
    return {"features": np.zeros((0, N_FEATURES), np.float32), "kinds": np.array([], dtype=str),
            "targets": np.zeros((0, len(TARGETS)), np.float32), "track": np.array([], dtype=str),
            "key": np.array([], dtype=str)}  # fmt: skip


def track_examples(path: str, track_id: str, seed: int, n_crops: int, seconds: float,
                   deadline: float = math.inf) -> dict[str, np.ndarray]:  # fmt: skip
    """The examples of one song (:data:`KEYS`); a draw that needs more headroom than the table
    allows is skipped. ``deadline`` (``time.time()``): stop making crops past it."""
    import time

    rows: dict[str, list] = {k: [] for k in KEYS}
    for key, crop in crops_of(path, track_id, seed, n_crops, seconds):
        if time.time() > deadline:
            break
        try:
            ex = make_example(crop, SAMPLE_RATE, seed, key)
        except ValueError as exc:
            log.info("skip %s: %s", key, exc)
            continue
        for name, value in (("features", ex.features), ("kinds", ex.kind), ("targets", ex.targets),
                            ("track", track_id), ("key", key)):  # fmt: skip
            rows[name].append(value)
    if not rows["key"]:
        return empty_examples()
    return {"features": np.array(rows["features"], np.float32), "kinds": np.array(rows["kinds"]),
            "targets": np.array(rows["targets"], np.float32), "track": np.array(rows["track"]),
            "key": np.array(rows["key"])}  # fmt: skip


def concat_examples(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One set from many, rows sorted by ``key``."""
    parts = [p for p in parts if len(p["key"])]
    if not parts:
        return empty_examples()
    data = {k: np.concatenate([p[k] for p in parts]) for k in KEYS}
    order = np.argsort(data["key"], kind="stable")
    return {k: v[order] for k, v in data.items()}


def to_bytes(data: dict[str, np.ndarray]) -> bytes:
    """A set of examples as ``.npz`` bytes (no pickles: strings are stored as unicode arrays)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in data.items()})
    return buf.getvalue()


def from_bytes(blob: bytes) -> dict[str, np.ndarray]:
    import io

    with np.load(io.BytesIO(blob), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_examples(data: dict[str, np.ndarray], path: str | Path, meta: dict[str, Any]) -> None:
    """``path`` (``.npz``) and ``path.json`` (``meta``: what made it), each written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(to_bytes(data))
    os.replace(tmp, path)
    tmp_meta = path.with_name(f".{path.name}.json.tmp")
    tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp_meta, path.with_name(path.name + ".json"))


def load_examples(path: str | Path, meta: dict[str, Any] | None = None) -> dict[str, np.ndarray] | None:
    """The set saved at ``path``; None when it is missing or (given ``meta``) was made with other settings.

    Raises:
        ValueError: the file is not a set of examples of this version's features.
    """
    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    if not path.is_file():
        return None
    if meta is not None and (not meta_path.is_file() or json.loads(meta_path.read_text()) != json.loads(json.dumps(meta))):
        return None
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    missing = [k for k in ("features", "kinds", "targets", "track") if k not in data]
    if missing or data["features"].ndim != 2 or data["features"].shape[1] != N_FEATURES:
        raise ValueError(f"{path}: not a set of compressor examples with {N_FEATURES} features "
                         f"(missing {missing}, features {data.get('features', np.zeros(0)).shape})")  # fmt: skip
    data.setdefault("key", np.array([f"{t}:{i}" for i, t in enumerate(data["track"])]))
    return data
