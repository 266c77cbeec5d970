"""Demaster throughput: the thesis-style single-process loop vs the Ray Data job (1 and 2 workers).

    python bench/bench_demaster.py --corpus ../shared/data/fma_mini --limit 24

Writes a JSON record to bench/results/ and prints a Markdown table for BENCHMARKS.md. The
baseline is the obvious single-process way (librosa + scipy + matplotlib, every output written),
timed once its caches are warm; the job's figure is its own ``tracks_per_s`` (first track
started to last finished, cluster start-up excluded) and per-stage means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def baseline_track(path: str, out: Path, rng: np.random.Generator) -> None:
    """One track the thesis's way: librosa/scipy/matplotlib, each stage with its obvious call."""
    import librosa
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.signal
    import soundfile as sf

    y, sr = librosa.load(path, sr=44100, mono=True, duration=30.0)
    # EQ: one bell in the STFT domain
    spec = librosa.stft(y, n_fft=2048, hop_length=512)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=2048)
    fc, q, g = rng.uniform(200, 4000), rng.uniform(1, 4), 10 ** (rng.uniform(-6, 6) / 20) - 1
    spec *= (1 + g * np.exp(-((freqs - fc) ** 2) / (2 * (fc / q) ** 2)))[:, None]
    y_eq = librosa.istft(spec, hop_length=512, length=len(y))
    # compressor: RMS envelope with a one-pole filter, static curve
    alpha = np.exp(-1 / (0.02 * sr))
    env = scipy.signal.lfilter([1 - alpha], [1, -alpha], y_eq**2)
    level = 10 * np.log10(env + 1e-10)
    thr, ratio = -20.0, 4.0
    gain = np.where(level > thr, (thr + (level - thr) / ratio) - level, 0.0)
    y_c = y_eq * 10 ** (gain / 20)
    # reverb + echo
    t = np.arange(int(1.5 * sr)) / sr
    ir = rng.standard_normal(t.size) * np.exp(-6.9 * t / 1.5)
    ir /= np.sqrt((ir**2).sum())
    y_r = 0.8 * y_c + 0.2 * scipy.signal.fftconvolve(y_c, ir)[: len(y)]
    d = int(0.2 * sr)
    y_d = y_r.copy()
    y_d[d:] += 0.3 * y_r[:-d]
    y_d /= max(1.0, np.abs(y_d).max() / 0.999)
    # two mels, a figure, two WAVs, a text file
    m1 = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=128))
    m2 = librosa.power_to_db(librosa.feature.melspectrogram(y=y_d, sr=sr, n_fft=2048, hop_length=512, n_mels=128))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    librosa.display.specshow(m1, sr=sr, hop_length=512, ax=axes[0])
    librosa.display.specshow(m2, sr=sr, hop_length=512, ax=axes[1])
    name = Path(path).stem
    fig.savefig(out / f"{name}.png")
    plt.close(fig)
    sf.write(out / f"{name}_original.wav", y, sr, subtype="PCM_16")
    sf.write(out / f"{name}_degraded.wav", y_d, sr, subtype="PCM_16")
    np.savetxt(out / f"{name}.txt", np.array([fc, q, g, thr, ratio]))


def run_baseline(paths: list[str], warmup: int = 2) -> float:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for p in paths[:warmup]:
            baseline_track(p, Path(tmp), rng)
        t0 = time.perf_counter()
        for p in paths:
            baseline_track(p, Path(tmp), rng)
        return (time.perf_counter() - t0) / len(paths)


def run_job(corpus: str, limit: int, workers: int, out: Path, tracking: str) -> dict:
    """The real job, in a fresh process (its own local Ray), into an empty folder."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "jobs/demaster.py", "--corpus", corpus, "--out", str(out), "--limit", str(limit),
           "--workers", str(workers), "--tracking-uri", tracking]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1], capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    # peak RSS of a worker: from the per-stage record is not available; measure separately below
    return summary


def worker_peak_rss_mb(corpus: str, limit: int) -> float:
    """Peak RSS of one process running the track processor over ``limit`` tracks (one worker's load)."""
    code = f"""
import resource, sys, tempfile
sys.path.insert(0, '.')
from automaster.config import Config
from automaster.corpus import list_corpus
from automaster.pipelines.demaster import TrackProcessor
from dataclasses import asdict
proc = TrackProcessor(tempfile.mkdtemp(), Config())
for t in list_corpus({corpus!r})[:{limit}]:
    proc(asdict(t))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    from automaster.pipelines.runtime import WORKER_ENV

    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, **WORKER_ENV, "OMP_NUM_THREADS": "1"})  # fmt: skip
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="../shared/data/fma_mini")
    parser.add_argument("--limit", type=int, default=24)
    args = parser.parse_args()
    from automaster.corpus import list_corpus

    tracks = [t for t in list_corpus(args.corpus) if t.track_id not in ("098565", "099134")][: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tracking = f"sqlite:///{tmp / 'mlflow.db'}"
        base_s = run_baseline([t.path for t in tracks])
        jobs = {w: run_job(args.corpus, args.limit, w, tmp / f"w{w}", tracking) for w in (1, 2)}
    rss = worker_peak_rss_mb(args.corpus, min(8, args.limit))
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "tracks": args.limit,
        "baseline_s_per_track": base_s,
        "job": {w: {k: j[k] for k in ("tracks_per_s", "seconds_per_track", "stage_seconds_mean", "ok", "failed")} for w, j in jobs.items()},
        "worker_peak_rss_mb": rss,
    }
    record["speedup_vs_baseline_1w"] = jobs[1]["tracks_per_s"] * base_s
    record["speedup_vs_baseline_2w"] = jobs[2]["tracks_per_s"] * base_s
    record["scaling_1_to_2"] = jobs[2]["tracks_per_s"] / jobs[1]["tracks_per_s"]
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path(f"bench/results/demaster-{record['date']}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
