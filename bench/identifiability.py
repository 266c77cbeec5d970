"""Can the degradation parameters be told from the degraded audio alone, without a network?

    python bench/identifiability.py --data <demaster --out folder, ideally --variants 8>

Per dataset row, hand features of the degraded mel (per-band mean and spread, autocorrelation of
the frame energy and of the spectral flux up to 0.55 s, quantiles of the frame-to-frame decay,
level statistics), then per parameter a ridge regression and scikit-learn's gradient boosting
fitted on the training split and scored on validation + test: MAE / MAE of predicting the
training median. A ratio near 1 means these features carry nothing about the parameter at this
dataset size; the forecaster's `val/mae_ratio` can be read against it. Also the blind cepstral
echo estimate (``automaster.dsp.cepstrum``) on the waveforms. Writes bench/results/identifiability-<date>.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from automaster.dsp.cepstrum import estimate_echo  # noqa: E402
from automaster.effects.params import PARAMS  # noqa: E402

LAGS = 48  # frames (hop 512 at 44.1 kHz): 0.56 s, beyond the longest echo


def _autocorr(v: np.ndarray) -> np.ndarray:
    v = v - v.mean()
    energy = float(v @ v) + 1e-9
    return np.array([float(v[:-k] @ v[k:]) / energy for k in range(1, LAGS)])


def features(mel_db: np.ndarray) -> np.ndarray:
    """``(n_mels, F)`` dB -> one feature vector."""
    env = np.log(np.mean(10 ** (mel_db / 10), axis=0) + 1e-10)
    step = np.diff(mel_db, axis=1)
    falls = step[step < 0]
    decay = np.quantile(falls, [0.1, 0.25, 0.5, 0.75, 0.9]) if falls.size else np.zeros(5)
    flux = np.maximum(step, 0).mean(axis=0)
    return np.concatenate([
        mel_db.mean(axis=1), mel_db.std(axis=1), _autocorr(env), _autocorr(flux), decay,
        np.quantile(env, [0.05, 0.5, 0.95]), [env.std()],
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="demaster output folder (its dataset/ of Parquet files)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / f"identifiability-{time.strftime('%Y-%m-%d')}.json"))
    args = parser.parse_args()
    from sklearn.ensemble import HistGradientBoostingRegressor

    names = [p.name for p in PARAMS]
    x, y, split, echo = [], [], [], []
    for path in sorted(glob.glob(os.path.join(args.data, "dataset", "*.parquet"))):
        cols = ["split", "mel_degraded_db", "wave_degraded", "n_frames", *names]
        for row in pq.read_table(path, columns=cols).to_pylist():
            mel = np.asarray(row["mel_degraded_db"], np.float32).reshape(-1, row["n_frames"])
            x.append(features(mel))
            y.append([float(np.mean(row[n])) for n in names])
            split.append(row["split"])
            if row["split"] != "training":
                est = estimate_echo(np.asarray(row["wave_degraded"], np.float32) / 32768.0, 44100)
                echo.append((row["echo_delay_s"], row["echo_gain"], est.delay_s, est.gain))
    x, y, split = np.asarray(x), np.asarray(y), np.asarray(split)
    train, held = split == "training", split != "training"
    xn = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    xn = np.hstack([xn, np.ones((len(xn), 1))])
    ratios = {}
    for j, name in enumerate(names):
        target = y[:, j]
        base = float(np.abs(target[held] - np.median(target[train])).mean())
        ridge = min(
            float(np.abs(xn[held] @ np.linalg.solve(xn[train].T @ xn[train] + lam * np.eye(xn.shape[1]), xn[train].T @ target[train]) - target[held]).mean())
            for lam in (1.0, 10.0, 100.0, 1000.0)
        ) / base  # fmt: skip
        gbr = HistGradientBoostingRegressor(max_iter=200, random_state=0).fit(x[train], target[train])
        ratios[name] = {"ridge": ridge, "gradient_boosting": float(np.abs(gbr.predict(x[held]) - target[held]).mean()) / base}
        print(f"{name:20s} ridge {ratios[name]['ridge']:.2f}  gradient boosting {ratios[name]['gradient_boosting']:.2f}")
    e = np.asarray(echo)
    found = np.abs(e[:, 0] - e[:, 2]) < 0.003
    strong = e[:, 1] >= 0.1
    echo_summary = {
        "rows": len(e),
        "delay_found_within_3ms_gain_ge_0.1": float(found[strong].mean()),
        "delay_found_within_3ms_gain_lt_0.1": float(found[~strong].mean()),
        "gain_abs_err_median_when_found": float(np.median(np.abs(e[found, 3] - e[found, 1]))),
    }
    print(json.dumps(echo_summary, indent=1))
    record = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "data": args.data, "rows": {"training": int(train.sum()), "held_out": int(held.sum())},
        "mae_over_median_baseline": ratios, "cepstral_echo": echo_summary,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print("->", args.out)


if __name__ == "__main__":
    main()
