"""Mastering speed (issue 5): each inversion on 30 s of real stereo music, one thread; peak memory
on a 10-minute track; the batch job with 1 and 2 Ray workers.

    python bench/bench_master.py                                  # everything (~10 min on 2 idle cores)
    python bench/bench_master.py --music ../shared/data/music --skip-ray --skip-rss
    python bench/bench_master.py --repo /tmp/automaster-before     # the same figures for another checkout

The music (every audio file under ``--music``, sorted, concatenated and looped) is cut to
``--seconds`` of 44.1 kHz stereo. Models are untrained, default size (``Cascade(mode="params")``
for the chain, ``Cascade(mode="cascade")`` for mask and Griffin-Lim), seeded: the speed of a
trained model is the same. Timings exclude file I/O (``Masterer.master_audio``); each is the
minimum over ``--reps`` runs after a warm-up, in wall and process-CPU seconds, one thread
(torch, numba, BLAS). The model's share is the analysis pass with the model minus without it.
The machine's load average is recorded with every section: on shared cores the minimum wall
time is the figure to quote and CPU time the one to compare.

Writes ``bench/results/master-<date>.json`` and prints Markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread, before numpy/torch/numba load

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
SR = 44100
LOUDNESS = {"target_lufs": -14.0, "true_peak_dbtp": -1.0}


def load_music(folder: Path, seconds: float) -> np.ndarray:
    """Every lossless audio file under ``folder`` (WAV/FLAC/AIFF, sorted; lossy ones only if there
    is nothing else: the test folders hold MP3 copies of the same clips), resampled to 44.1 kHz
    stereo, concatenated and looped to ``seconds``: float32 ``(2, T)``."""
    from automaster.audio import is_audio_file, read_audio

    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_audio_file(p.name))
    lossless = [p for p in files if p.suffix.lower() in (".wav", ".flac", ".aif", ".aiff")]
    parts = []
    for path in lossless or files:
        audio, _ = read_audio(str(path), sample_rate=SR)
        parts.append(audio if audio.shape[0] == 2 else np.repeat(audio[:1], 2, axis=0))
    if not parts:
        raise SystemExit(f"bench_master: no audio files under {folder}")
    music = np.concatenate(parts, axis=1)
    n = int(round(seconds * SR))
    return np.ascontiguousarray(np.tile(music, (1, -(-n // music.shape[1])))[:, :n], dtype=np.float32)


def make_models(folder: Path) -> dict[str, str]:
    """Untrained default-size checkpoints: ``params`` (chain) and ``cascade`` (mask, griffinlim)."""
    import torch

    from automaster.config import load_config
    from automaster.model.cascade import Cascade
    from automaster.model.checkpoint import save_checkpoint

    paths = {}
    for mode in ("params", "cascade"):
        config = load_config(overrides=[f"model.mode={mode}"])
        torch.manual_seed(0)
        save_checkpoint(folder / mode, Cascade.from_config(config), config)
        paths[mode] = str(folder / mode)
    return paths


def best_of(fn, reps: int) -> dict[str, float]:
    """Min wall and process-CPU seconds of ``fn()`` over ``reps`` runs (after one warm-up)."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"wall_s": min(wall), "cpu_s": min(cpu), "wall_all_s": wall}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def time_inversion(model: str, inversion: str, audio: np.ndarray, reps: int, loudness: bool) -> dict:
    """One inversion on ``audio``: total, per stage (each stage's min over the runs), model share."""
    import torch

    from automaster.mastering import STAGES, Masterer, plan_chunks

    masterer = Masterer(model, inversion, iterations=32, **(LOUDNESS if loudness else {}))
    stages_runs: list[dict[str, float]] = []

    def run() -> None:
        stages = dict.fromkeys(STAGES, 0.0)
        masterer.master_audio(audio, SR, stages=stages)
        stages_runs.append(stages)

    total = best_of(run, reps)
    stages = {k: min(r[k] for r in stages_runs[1:]) for k in ("analysis", "render", "loudness")}
    chunks = plan_chunks(audio.shape[1], SR, masterer.cfg.chunk_s, masterer.cfg.context_s)
    with torch.inference_mode():
        with_model = best_of(lambda: masterer.analyse(audio, SR, chunks, masterer.inversion), reps)
        without = best_of(lambda: masterer.analyse(audio, SR, chunks), reps)
    return {
        "inversion": inversion, "loudness_stages": loudness, **total, "stages_wall_s": stages,
        "model_wall_s": with_model["wall_s"] - without["wall_s"], "model_cpu_s": with_model["cpu_s"] - without["cpu_s"],
        "load_after": load(),
    }


def griffinlim_vs_librosa(audio: np.ndarray, reps: int, librosa_reps: int) -> dict:
    """Our ``mel_to_audio`` against ``librosa.feature.inverse.mel_to_audio``, 32 iterations, on the
    mel of the same stereo audio and of its mono downmix; spectral convergence of each result."""
    import librosa
    import torch

    from automaster.dsp.griffinlim import mel_to_audio, spectral_convergence
    from automaster.dsp.mel import melspectrogram
    from automaster.dsp.stft import stft

    out = {}
    for name, x in (("stereo", audio), ("mono", audio.mean(axis=0, keepdims=True))):
        y = torch.from_numpy(np.ascontiguousarray(x))
        mel = melspectrogram(y)
        target = stft(y).abs()
        ours_t = best_of(lambda: mel_to_audio(mel, n_iter=32, length=y.shape[-1], generator=torch.Generator().manual_seed(0)), reps)
        ours = mel_to_audio(mel, n_iter=32, length=y.shape[-1], generator=torch.Generator().manual_seed(0))
        ref_runs = []
        for _ in range(librosa_reps):  # no warm-up: tens of seconds each, and nothing to compile
            np.random.seed(0)  # librosa's random initial phase comes from numpy's global RNG
            t, c = time.perf_counter(), time.process_time()
            ref = librosa.feature.inverse.mel_to_audio(mel.numpy(), sr=SR, n_fft=2048, hop_length=512, n_iter=32,
                                                       length=y.shape[-1])
            ref_runs.append((time.perf_counter() - t, time.process_time() - c))
        ref_t = {"wall_s": min(r[0] for r in ref_runs), "cpu_s": min(r[1] for r in ref_runs)}
        out[name] = {
            "ours_wall_s": ours_t["wall_s"], "ours_cpu_s": ours_t["cpu_s"],
            "librosa_wall_s": ref_t["wall_s"], "librosa_cpu_s": ref_t["cpu_s"],
            "speedup_cpu": ref_t["cpu_s"] / ours_t["cpu_s"], "speedup_wall": ref_t["wall_s"] / ours_t["wall_s"],
            "sc_ours": spectral_convergence(target, ours).mean().item(),
            "sc_librosa": spectral_convergence(target, torch.from_numpy(ref)).mean().item(),
            "load_after": load(),
        }
    return out


RSS_CODE = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import numpy as np, torch, numba
torch.set_num_threads(1); numba.set_num_threads(1)
from automaster.mastering import Masterer

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

audio = np.load({audio!r}, mmap_mode="r")
reps = -(-{samples} // audio.shape[1])
audio = np.ascontiguousarray(np.tile(audio, (1, reps))[:, :{samples}])
m = Masterer({model!r}, {inversion!r}, iterations={iterations}, target_lufs=-14.0, true_peak_dbtp=-1.0)
m.master_audio(audio[:, : 5 * 44100], 44100)  # warm-up (JIT, caches) before the baseline
base = rss_mb()
t = time.perf_counter()
out, info = m.master_audio(audio, 44100)
seconds = time.perf_counter() - t
print(json.dumps({{"baseline_rss_mb": base, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "audio_mb": audio.nbytes / 2**20, "seconds": seconds, "chunks": info["chunks"]}}))
"""


def peak_rss(repo: Path, models: dict[str, str], audio_file: Path, minutes: float, inversion: str, iterations: int) -> dict:
    """Peak RSS of a fresh process mastering ``minutes`` of stereo with ``inversion`` (loudness on)."""
    model = models["params" if inversion == "chain" else "cascade"]
    code = RSS_CODE.format(repo=str(repo), audio=str(audio_file), samples=int(minutes * 60 * SR), model=model,
                           inversion=inversion, iterations=iterations)
    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=repo,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)})
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {"inversion": inversion, "minutes": minutes, "iterations": iterations, **out, "load_after": load()}


def ray_scaling(repo: Path, model: str, audio: np.ndarray, n_files: int, inversion: str, tmp: Path) -> list[dict]:
    """The batch job (``jobs/master.py``, its own local Ray) over ``n_files`` files of the audio's
    length, with 1 and 2 workers; the job's own throughput (first file started to last finished)."""
    import soundfile as sf

    folder = tmp / f"in-{inversion}"
    folder.mkdir(exist_ok=True)
    step = audio.shape[1] // n_files
    for i in range(n_files):  # every file a different rotation of the music
        sf.write(folder / f"track{i:02d}.flac", np.roll(audio, -i * step, axis=1).T, SR, subtype="PCM_16")
    runs = []
    for workers in (1, 2):
        out = tmp / f"out-{inversion}-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "jobs/master.py", "--model", model, "--input", str(folder), "--out", str(out),
               "--inversion", inversion, "--target-lufs", "-14", "--true-peak", "-1", "--workers", str(workers),
               "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"]  # fmt: skip
        load_before = load()
        t = time.perf_counter()
        # PYTHONPATH: the Ray workers import this checkout's automaster too (not an installed one).
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=repo,
                             env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                                  "PYTHONPATH": str(repo)})
        wall = time.perf_counter() - t
        if res.returncode != 0:
            runs.append({"inversion": inversion, "workers": workers, "error": f"exit {res.returncode}: {res.stderr[-2000:]}"})
            continue
        summary = json.loads((out / "summary.json").read_text())
        runs.append({
            "inversion": inversion, "workers": workers, "files": n_files, "ok": summary["ok"],
            "files_per_s": summary["files_per_s"], "processing_s": summary["processing_s"],
            "seconds_per_file": summary["seconds_per_file"], "stage_seconds_mean": summary["stage_seconds_mean"],
            "job_wall_s": wall, "load_before": load_before, "load_after": load(),
        })
    return runs


def tables(record: dict) -> str:
    lines = ["| inversion | loudness stages | wall s (min) | CPU s | analysis | of which model (CPU) | render | levels | x real time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in record["paths"]:
        s = r["stages_wall_s"]
        lines.append(
            f"| {r['inversion']} | {'-14 LUFS / -1 dBTP' if r['loudness_stages'] else 'off'} | {r['wall_s']:.2f} | "
            f"{r['cpu_s']:.2f} | {s['analysis']:.2f} | {r['model_cpu_s']:.2f} | {s['render']:.2f} | {s['loudness']:.2f} | "
            f"{record['seconds'] / r['wall_s']:.0f} |"
        )
    if record.get("griffinlim_vs_librosa"):
        lines += ["", "| mel_to_audio, 32 it. | ours wall / CPU s | librosa wall / CPU s | speed-up (CPU) | SC ours / librosa |",
                  "|---|---|---|---|---|"]
        for name, g in record["griffinlim_vs_librosa"].items():
            lines.append(f"| {name} | {g['ours_wall_s']:.2f} / {g['ours_cpu_s']:.2f} | {g['librosa_wall_s']:.1f} / "
                         f"{g['librosa_cpu_s']:.1f} | {g['speedup_cpu']:.1f}x | {g['sc_ours']:.3f} / {g['sc_librosa']:.3f} |")
    if record.get("peak_rss"):
        lines += ["", "| 10 min stereo | peak RSS MB | baseline (model + audio) MB | audio in MB | seconds |", "|---|---|---|---|---|"]
        for r in record["peak_rss"]:
            lines.append(f"| {r['inversion']} | {r['peak_rss_mb']:.0f} | {r['baseline_rss_mb']:.0f} | {r['audio_mb']:.0f} | {r['seconds']:.0f} |")
    if record.get("ray"):
        lines += ["", "| job | workers | files/s | s per file (in worker) | job wall s | load before |", "|---|---|---|---|---|---|"]
        for r in record["ray"]:
            if "error" in r:
                lines.append(f"| {r['inversion']} | {r['workers']} | failed: {r['error'][-200:]!r} | | | |")
                continue
            lines.append(f"| {r['inversion']} x {r['files']} | {r['workers']} | {r['files_per_s']:.3f} | "
                         f"{r['seconds_per_file']:.2f} | {r['job_wall_s']:.0f} | {r['load_before']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--music", type=Path, default=HERE / "tests" / "data" / "music", help="folder of music")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the timed clip")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per figure (the minimum is kept)")
    parser.add_argument("--librosa-reps", type=int, default=1)
    parser.add_argument("--rss-minutes", type=float, default=10.0)
    parser.add_argument("--rss-iterations", type=int, default=8, help="Griffin-Lim iterations in the memory run")
    parser.add_argument("--ray-files", type=int, default=8)
    parser.add_argument("--ray-inversions", nargs="+", default=["chain", "griffinlim"])
    parser.add_argument("--skip-librosa", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--repo", type=Path, default=HERE, help="checkout whose automaster is measured")
    parser.add_argument("--out", type=Path, default=HERE / "bench" / "results")
    args = parser.parse_args()
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))

    import numba
    import torch

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    audio = load_music(args.music, args.seconds)
    record: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__} CPU, one thread",
        "repo": str(repo), "music": str(args.music), "seconds": args.seconds, "reps": args.reps, "load_start": load(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"master-{record['date']}.json"

    def save() -> None:  # after every section: a long run that fails late keeps what it measured
        record["load_end"] = load()
        target.write_text(json.dumps(record, indent=2))

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = make_models(tmp / "models")
        record["paths"] = []
        for inversion, loudness in (("chain", False), ("chain", True), ("mask", True), ("griffinlim", True)):
            model = models["params" if inversion == "chain" else "cascade"]
            record["paths"].append(time_inversion(model, inversion, audio, args.reps, loudness))
            save()
            print(f"{inversion} (loudness {loudness}): {record['paths'][-1]['wall_s']:.2f} s wall, "
                  f"{record['paths'][-1]['cpu_s']:.2f} s CPU", file=sys.stderr)
        if not args.skip_librosa:
            record["griffinlim_vs_librosa"] = griffinlim_vs_librosa(audio, args.reps, args.librosa_reps)
            save()
        if not args.skip_rss:
            audio_file = tmp / "music.npy"
            np.save(audio_file, audio)
            record["peak_rss"] = []
            for inv in ("chain", "mask", "griffinlim"):
                record["peak_rss"].append(peak_rss(repo, models, audio_file, args.rss_minutes, inv, args.rss_iterations))
                save()
        if not args.skip_ray:
            record["ray"] = []
            for inv in args.ray_inversions:
                record["ray"] += ray_scaling(repo, models["params" if inv == "chain" else "cascade"], audio, args.ray_files, inv, tmp)
                save()
    save()
    print(tables(record))
    print(textwrap.dedent(f"""
        load average (1, 5, 15 min): start {record['load_start']}, end {record['load_end']}
        record: {target}"""))


if __name__ == "__main__":
    main()
