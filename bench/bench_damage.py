"""How hard does demastering hit? Distribution of the damage over a corpus (default: fma_mini).

    python bench/bench_damage.py --corpus ../shared/data/fma_mini --out /tmp/damage

Runs the real demaster job (30 s clips, one variant) and measures, per track, between the clean
original and its degraded version: mel L1 in dB, SI-SDR in dB, the degraded sample peak (dBFS),
the headroom gain applied, and the spectral centroid and bandwidth change (a band-passing chain
would move them a lot). Writes bench/results/damage-<date>.json and prints percentiles.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from automaster.dataset import decode_row  # noqa: E402
from automaster.dsp.metrics import mel_l1_db, peak_dbfs, si_sdr  # noqa: E402


def _centroid_bandwidth(mel_db: np.ndarray) -> tuple[float, float]:
    """Energy-weighted mean mel band and its spread (in mel bands)."""
    power = 10 ** (mel_db / 10)
    weights = power.sum(axis=1)
    bands = np.arange(mel_db.shape[0])
    c = float((bands * weights).sum() / weights.sum())
    return c, float(np.sqrt((((bands - c) ** 2) * weights).sum() / weights.sum()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "fma_mini"))
    parser.add_argument("--out", default="/tmp/automaster-damage")
    parser.add_argument("--reuse", action="store_true", help="measure an existing --out")
    args = parser.parse_args()
    if not args.reuse:
        subprocess.run([sys.executable, "jobs/demaster.py", "--corpus", args.corpus, "--out", args.out,
                        "--tracking-uri", f"sqlite:///{args.out}/mlflow.db"], cwd=REPO, check=True)  # fmt: skip
    stats: dict[str, list[float]] = {k: [] for k in ("mel_l1_db", "si_sdr_db", "peak_dbfs", "original_peak_dbfs",
                                                      "output_gain_db", "centroid_shift_bands", "bandwidth_ratio")}  # fmt: skip
    for raw in pq.read_table(Path(args.out) / "dataset").to_pylist():
        r = decode_row(raw)
        stats["mel_l1_db"].append(mel_l1_db(r["mel_original_db"], r["mel_degraded_db"]))
        stats["si_sdr_db"].append(si_sdr(r["wave_degraded"], r["wave_original"]))
        stats["peak_dbfs"].append(peak_dbfs(r["wave_degraded"]))
        stats["original_peak_dbfs"].append(peak_dbfs(r["wave_original"]))
        stats["output_gain_db"].append(float(r["output_gain_db"]))
        c0, b0 = _centroid_bandwidth(r["mel_original_db"])
        c1, b1 = _centroid_bandwidth(r["mel_degraded_db"])
        stats["centroid_shift_bands"].append(c1 - c0)
        stats["bandwidth_ratio"].append(b1 / b0)
    pct = {k: dict(zip(("p5", "p25", "p50", "p75", "p95"), np.percentile(v, [5, 25, 50, 75, 95]).round(2).tolist()))
           for k, v in stats.items()}  # fmt: skip
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "tracks": len(stats["mel_l1_db"]),
        "percentiles": pct,
        "clipped_tracks": int(sum(p >= 0.0 for p in stats["peak_dbfs"])),
        "headroom_applied_tracks": int(sum(g < 0 for g in stats["output_gain_db"])),
    }
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / f"damage-{record['date']}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
