"""The paired dataset's Parquet schema: one row per track and variant.

Plain Arrow types only (lists plus explicit shapes), so the files read back with shapes intact
in Ray Data, pandas or bare pyarrow. Mels are absolute dB (``10 log10(max(P, 1e-6))``), row-major
``(n_mels, n_frames)``; waveforms are the 16-bit PCM samples of the written WAVs; every ParamSpec
entry has a column: per-frame ones a list of ``n_frames`` values, per-clip ones a float.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from automaster.effects.params import PARAMS

DATASET_DIR = "dataset"
META_FILE = "dataset_meta.json"
SCHEMA_VERSION = 1

_BASE_FIELDS = [
    pa.field("track_id", pa.string()),
    pa.field("variant", pa.int32()),
    pa.field("split", pa.string()),
    pa.field("genre", pa.string()),
    pa.field("source_path", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("sample_rate", pa.int32()),
    pa.field("n_samples", pa.int64()),
    pa.field("n_mels", pa.int32()),
    pa.field("n_frames", pa.int32()),
    pa.field("input_gain_db", pa.float32()),
    pa.field("rms_db", pa.float32()),
    pa.field("mel_original_db", pa.list_(pa.float32())),
    pa.field("mel_degraded_db", pa.list_(pa.float32())),
    pa.field("wave_original", pa.list_(pa.int16())),
    pa.field("wave_degraded", pa.list_(pa.int16())),
    pa.field("audio_original", pa.string()),
    pa.field("audio_degraded", pa.string()),
]
SCHEMA = pa.schema(
    _BASE_FIELDS
    + [pa.field(p.name, pa.list_(pa.float32()) if p.per_frame else pa.float32()) for p in PARAMS]
)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1) -> int16, scaled by 32768 as libsndfile does, so writing
    :func:`from_pcm16` of the result as PCM_16 stores exactly these integers."""
    return np.clip(np.round(np.asarray(x, dtype=np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def from_pcm16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) / 32768.0


def table_from_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (numpy arrays for list columns) -> an Arrow table with :data:`SCHEMA`."""
    columns = {}
    for field in SCHEMA:
        values = [row[field.name] for row in rows]
        if pa.types.is_list(field.type):
            columns[field.name] = _list_array(values, field.type.value_type)
        else:
            columns[field.name] = pa.array(values, type=field.type)
    return pa.table(columns, schema=SCHEMA)


def _list_array(values: list[Any], value_type: pa.DataType) -> pa.ListArray:
    """Numpy arrays -> one Arrow list column without a per-element Python pass (100x faster
    than ``pa.array`` on float lists of a million values)."""
    flat = [np.asarray(v, dtype=value_type.to_pandas_dtype()).reshape(-1) for v in values]
    offsets = np.zeros(len(flat) + 1, dtype=np.int32)
    np.cumsum([f.size for f in flat], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(flat), type=value_type))


# The large list columns: mels and waveforms, ~1.3M values each per 30 s row.
_BULK_COLUMNS = ("mel_original_db", "mel_degraded_db", "wave_original", "wave_degraded")


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Serialise rows as one Parquet file, ready for an atomic write.

    zstd level 1 without dictionary encoding: dictionaries of float spectra never pay off, and
    trying them doubles the write time. The bulk columns are stored BYTE_STREAM_SPLIT (byte
    planes: the sign-extension bytes of 16-bit samples stored as Parquet INT32, and the exponent
    bytes of the dB floats, compress to almost nothing) and without min/max statistics, which
    nothing reads: 25% less time and 28% fewer bytes than plain zstd (8.6 -> 6.2 MB per 30 s
    track), and twice as fast to read. The schema is unchanged; readers need Parquet
    BYTE_STREAM_SPLIT for INT32 (pyarrow >= 16).
    """
    sink = io.BytesIO()
    pq.write_table(
        table_from_rows(rows), sink, compression="zstd", compression_level=1, use_dictionary=False,
        use_byte_stream_split=[f"{c}.list.element" for c in _BULK_COLUMNS],
        write_statistics=[f.name for f in SCHEMA if f.name not in _BULK_COLUMNS],
    )
    return sink.getvalue()


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as read back (lists) -> numpy arrays with their shapes restored.

    ``mel_*_db``: ``(n_mels, n_frames)``; ``wave_*``: float32 ``(n_samples,)``; per-frame params
    ``(n_frames,)``; everything else unchanged.
    """
    out = dict(row)
    shape = (int(row["n_mels"]), int(row["n_frames"]))
    for key in ("mel_original_db", "mel_degraded_db"):
        out[key] = np.asarray(row[key], dtype=np.float32).reshape(shape)
    for key in ("wave_original", "wave_degraded"):
        if row.get(key) is not None:
            out[key] = from_pcm16(np.asarray(row[key]))
    for p in PARAMS:
        if p.per_frame:
            out[p.name] = np.asarray(row[p.name], dtype=np.float32)
    return out


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a dataset folder or file with bare pyarrow (no Ray)."""
    return pq.read_table(path, columns=columns)
