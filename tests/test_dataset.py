"""The dataset's Parquet rows: written by the demaster job, read back by bare pyarrow."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq

from automaster.dataset import SCHEMA, decode_row, parquet_bytes, to_pcm16
from automaster.effects.params import PARAMS


def _row(variant: int, n_frames: int = 40, n_samples: int = 40 * 512) -> dict:
    rng = np.random.default_rng(variant)
    row = {
        "track_id": "000002", "variant": variant, "split": "training", "genre": "Hip-Hop",
        "source_path": "/x/000002.mp3", "seed": 123, "sample_rate": 44100, "n_samples": n_samples,
        "n_mels": 128, "n_frames": n_frames, "input_gain_db": -0.5, "rms_db": -18.0,
        "mel_original_db": rng.uniform(-60, 40, (128, n_frames)).astype(np.float32),
        "mel_degraded_db": rng.uniform(-60, 40, (128, n_frames)).astype(np.float32),
        "wave_original": to_pcm16(rng.uniform(-1, 1, n_samples)),
        "wave_degraded": to_pcm16(rng.uniform(-1, 1, n_samples)),
        "audio_original": "output_audio/000002_original.wav",
        "audio_degraded": f"output_audio/000002_degraded_v{variant}.wav",
    }
    for p in PARAMS:
        row[p.name] = rng.uniform(p.low, p.high, n_frames).astype(np.float32) if p.per_frame else float(p.low)
    return row


def test_rows_read_back_exactly_with_bare_pyarrow():
    rows = [_row(0), _row(1)]
    data = parquet_bytes(rows)
    table = pq.read_table(io.BytesIO(data))
    assert table.schema.equals(SCHEMA)
    for row, back in zip(rows, (decode_row(r) for r in table.to_pylist())):
        np.testing.assert_array_equal(back["mel_degraded_db"], row["mel_degraded_db"])
        np.testing.assert_array_equal(back["wave_original"], row["wave_original"] / np.float32(32768))
        np.testing.assert_array_equal(back["eq_low_gain_db"], row["eq_low_gain_db"])
        assert back["audio_degraded"] == row["audio_degraded"]


def test_bulk_columns_are_byte_stream_split_without_statistics():
    meta = pq.ParquetFile(io.BytesIO(parquet_bytes([_row(0)]))).metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    for name in ("mel_original_db", "wave_degraded"):
        column = columns[f"{name}.list.element"]
        assert "BYTE_STREAM_SPLIT" in column.encodings and not column.is_stats_set
        assert column.compression == "ZSTD"
    assert columns["rms_db"].is_stats_set  # the small columns keep theirs (row-group pruning)
