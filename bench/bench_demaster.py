"""Demaster throughput: the thesis-style single-process loop vs the Ray Data job (1 and 2 workers).

    flock /tmp/bench.lock python bench/bench_demaster.py --corpus ../shared/data/fma_mini --limit 24 [--tag after]

Writes a JSON record to bench/results/ (and prints it) for BENCHMARKS.md. The
baseline is the obvious single-process way (librosa + scipy + matplotlib, every output written),
timed once its caches are warm; the job's figure is its own ``tracks_per_s`` (first track
started to last finished; cluster start-up and each worker's warm-up excluded) and per-stage
means. Then the job's track processor alone in one process (no Ray): seconds per track, stages,
peak RSS. The load average at the start and end goes into the record: on a shared machine,
trust a run only when it was low.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    return json.loads((out / "summary.json").read_text())


def single_process(corpus: str, limit: int) -> dict:
    """The job's track processor in one plain process (no Ray) over ``limit`` tracks, after its
    warm-up: seconds per track, per-stage means and the process's peak RSS (one worker's load)."""
    code = f"""
import json, resource, sys, tempfile, time
sys.path.insert(0, '.')
from automaster.config import Config
from automaster.corpus import list_corpus
from automaster.pipelines.demaster import STAGES, TrackProcessor
from dataclasses import asdict
t = time.perf_counter()
proc = TrackProcessor(tempfile.mkdtemp(), Config(), warm_up=True)
warm_up_s = time.perf_counter() - t
t = time.perf_counter()
rows = [proc(asdict(x)) for x in list_corpus({corpus!r})[:{limit}]]
ok = [r for r in rows if r["status"] == "ok"]
print(json.dumps({{"seconds_per_track": (time.perf_counter() - t) / len(rows), "warm_up_s": warm_up_s, "ok": len(ok),
                  "stage_seconds_mean": {{s: sum(r[f"stage_{{s}}_s"] for r in ok) / len(ok) for s in STAGES}},
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    from automaster.pipelines.runtime import WORKER_ENV

    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, **WORKER_ENV, "OMP_NUM_THREADS": "1"})  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="../shared/data/fma_mini")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--tag", default="", help="suffix of the result file: demaster-DATE-TAG.json")
    args = parser.parse_args()
    from automaster.corpus import list_corpus

    load_start = os.getloadavg()
    tracks = [t for t in list_corpus(args.corpus) if t.track_id not in ("098565", "099134")][: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tracking = f"sqlite:///{tmp / 'mlflow.db'}"
        base_s = run_baseline([t.path for t in tracks])
        jobs = {w: run_job(args.corpus, args.limit, w, tmp / f"w{w}", tracking) for w in (1, 2)}
    single = single_process(args.corpus, min(12, args.limit))
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_average_1_5_15_at_start": [round(v, 2) for v in load_start],
        "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
        "tracks": args.limit,
        "baseline_s_per_track": base_s,
        "job": {w: {k: j[k] for k in ("tracks_per_s", "seconds_per_track", "stage_seconds_mean", "ok", "failed")} for w, j in jobs.items()},
        "single_process": single,
        "worker_peak_rss_mb": single["peak_rss_mb"],
    }
    record["speedup_vs_baseline_1w"] = jobs[1]["tracks_per_s"] * base_s
    record["speedup_vs_baseline_2w"] = jobs[2]["tracks_per_s"] * base_s
    record["speedup_vs_baseline_single_process"] = base_s / single["seconds_per_track"]
    record["scaling_1_to_2"] = jobs[2]["tracks_per_s"] / jobs[1]["tracks_per_s"]
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    Path(f"bench/results/demaster-{time.strftime('%Y-%m-%d')}{suffix}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
