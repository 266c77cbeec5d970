"""The demaster dataset's fixed pairs, read with bare pyarrow: splits, decoded rows, parameter means.

Shared by the Ray-free core and the Ray Train job (which reads the same files with Ray Data).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from automaster import storage
from automaster.dataset import DATASET_DIR, META_FILE, decode_row
from automaster.dataset import from_pcm16 as decode_pcm
from automaster.training.bank import ClipBank, bank_from_rows
from automaster.effects.params import PARAMS

log = logging.getLogger(__name__)

# Only the columns training reads (the dataset also holds paths and bookkeeping).
COLUMNS = [
    "track_id", "variant", "split", "sample_rate", "n_samples", "n_mels", "n_frames",
    "mel_original_db", "mel_degraded_db", "wave_original", "wave_degraded",
] + [p.name for p in PARAMS]  # fmt: skip


def read_meta(data: str) -> dict[str, Any]:
    """The dataset's ``dataset_meta.json``; checks it was made with this parameter table."""
    path = storage.join(data, META_FILE)
    if not storage.exists(path):
        raise ValueError(f"{data!r} is not a demaster output: {META_FILE} is missing (run `automaster demaster` first)")
    meta = json.loads(storage.read_bytes(path))
    names = [p["name"] for p in meta.get("params", [])]
    if names != [p.name for p in PARAMS]:
        raise ValueError(f"{data!r} was made with other effect parameters ({names}); re-run demaster")
    return meta


def index_files(data: str) -> dict[str, dict[str, Any]]:
    """Per Parquet file of the dataset: its split, track ids, rows and parameter sums.

    Reads only the small columns (Parquet column projection): the mels and waveforms stay on disk.
    """
    import pyarrow.parquet as pq

    files = [f for f in storage.list_files(storage.join(data, DATASET_DIR)) if f.endswith(".parquet")]
    if not files:
        raise ValueError(f"{data!r} holds no Parquet files under {DATASET_DIR}/")
    index: dict[str, dict[str, Any]] = {}
    names = [p.name for p in PARAMS]
    for f in files:
        fs, path = storage.resolve(f)
        table = pq.read_table(path, filesystem=fs, columns=["split", "track_id", *names])
        splits = set(table.column("split").to_pylist())
        if len(splits) > 1:
            raise ValueError(f"{f}: rows of several splits ({sorted(splits)}); one file must hold one track")
        sums = {n: float(sum(np.mean(v) for v in table.column(n).to_numpy(zero_copy_only=False))) for n in names}
        index[f] = {
            "split": splits.pop() if splits else "training",
            "tracks": sorted({str(t) for t in table.column("track_id").to_pylist()}),
            "rows": table.num_rows,
            "sums": sums,
        }
    return index


@dataclass
class Splits:
    """Which files train and which validate, with row counts and the training parameter means."""

    train_files: list[str]
    val_files: list[str]
    counts: dict[str, int]
    val_name: str
    means: dict[str, float]  # physical units: the predict-the-mean baseline of validation


def split_files(data: str) -> Splits:
    """Training and validation files of the dataset ``data``.

    Validation is the ``validation`` split, else ``test``; a corpus too small to have either
    (a folder of a few files) holds out its last ~10% of training tracks instead, with a warning.
    """
    index = index_files(data)
    by_split: dict[str, list[str]] = {s: [] for s in ("training", "validation", "test")}
    for f, info in index.items():
        by_split.setdefault(info["split"], []).append(f)
    counts = {s: sum(index[f]["rows"] for f in fs) for s, fs in by_split.items()}
    if counts["training"] == 0:
        raise ValueError(f"{data!r} has no training rows (splits: {counts})")
    train_files = by_split["training"]
    val_name = next((name for name in ("validation", "test") if counts[name]), None)
    if val_name is not None:
        val_files = by_split[val_name]
    else:
        ids = sorted({t for f in train_files for t in index[f]["tracks"]})
        if len(ids) < 2:
            raise ValueError(f"{data!r} has a single track: nothing to validate on (splits: {counts})")
        held = set(ids[-max(1, len(ids) // 10) :])
        log.warning("no validation or test rows in %s: holding out training tracks %s for validation", data, sorted(held))
        val_files = [f for f in train_files if set(index[f]["tracks"]) & held]
        train_files = [f for f in train_files if f not in val_files]
        if not train_files:
            raise ValueError(f"{data!r}: holding out {sorted(held)} leaves no training files (one file per track?)")
        counts.update(training=sum(index[f]["rows"] for f in train_files), validation=sum(index[f]["rows"] for f in val_files))
        val_name = "held-out training tracks"
    n = sum(index[f]["rows"] for f in train_files)
    means = {p.name: sum(index[f]["sums"][p.name] for f in train_files) / max(n, 1) for p in PARAMS}
    return Splits(train_files, val_files, counts, val_name, means)


def read_rows(files: list[str], limit: int = 0) -> list[dict[str, Any]]:
    """Decoded rows of ``files`` in file order; ``limit`` > 0 keeps that many, evenly spread."""
    import pyarrow.parquet as pq

    rows = []
    for f in sorted(files):
        fs, path = storage.resolve(f)
        rows.extend(pq.read_table(path, filesystem=fs, columns=COLUMNS).to_pylist())
    if 0 < limit < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    return [decode_row(r) for r in rows]


def read_originals(files: list[str]) -> ClipBank:
    """The clean original of every track in ``files`` (one per track: the variants share it),
    reading only the ``track_id``, ``variant`` and ``wave_original`` columns."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = []
    for f in sorted(files):
        fs, path = storage.resolve(f)
        table = pq.read_table(path, filesystem=fs, columns=["track_id", "variant", "wave_original"])
        table = table.filter(pc.equal(table.column("variant"), 0))
        waves = table.column("wave_original").combine_chunks()  # list<int16>: no Python ints
        offsets, values = waves.offsets.to_numpy(), waves.values.to_numpy()
        for i, track in enumerate(table.column("track_id").to_pylist()):
            rows.append({"track_id": track, "wave_original": decode_pcm(values[offsets[i] : offsets[i + 1]])})
    return bank_from_rows(rows)
