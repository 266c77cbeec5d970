"""Mastering at peer speed (issue 20): automaster's CPU per file, start-up and memory next to
Matchering and ffmpeg's two-pass loudnorm, all measured in one run on the same songs.

    flock /tmp/heavy.lock python bench/bench_product.py --corpus ../shared/data/fma_mini --songs 14

Every figure is a whole process's CPU (user + system, from ``getrusage(RUSAGE_CHILDREN)``) or peak
RSS, as ``/usr/bin/time -v`` reports them:

* **CPU per extra 30 s file**: one process mastering N songs minus one mastering 1, over N - 1
  (automaster in-process, one worker, default settings, no pictures; Matchering 2 in one Python
  process, each song toward the next as its reference; ffmpeg is one process per file, so its
  figure is a whole two-pass run per file, start-up included);
* **one file, whole process**: ``automaster master --input song --out x.flac`` against
  ``python -c "import torch"`` (the issue's target: at most that plus 2 s), the median of 5;
* **long stereo files** (``--minutes``, default 4, 10, 20 and 40; ``--only-long`` runs these
  alone): peak RSS, CPU and the loudness error of the one-file command at ``--preset streaming``
  (the song looped; past 5 minutes a file is mastered a block at a time);
* **presets**: every song at ``--preset streaming`` (-14 LUFS, -1 dBTP): the largest loudness
  error and the largest true peak of the outputs.

Writes ``bench/results/product-<date>.json`` and prints the Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
PY = sys.executable
AUTOMASTER = [PY, "-m", "automaster.cli"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(HERE)}

MATCHERING = """
import sys, matchering as mg
mg.log(lambda *a, **k: None)
songs = sys.argv[2:]
for i, song in enumerate(songs):
    ref = songs[(i + 1) % len(songs)] if len(songs) > 1 else sys.argv[1]
    mg.process(target=song, reference=ref, results=[mg.pcm24(song + '.matchering.wav')])
"""


def run(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd`` to its end under ``/usr/bin/time``; its CPU seconds, wall seconds and peak RSS (MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "peak_kib=%M", *cmd], env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... exited {done.returncode}: {done.stderr[-800:]}")
    peak = int(done.stderr.rsplit("peak_kib=", 1)[1].split()[0])
    return {"cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), "wall_s": wall,
            "peak_mib": peak / 1024.0}


def prepare(corpus: Path, n: int, tmp: Path) -> list[Path]:
    """``n`` 30 s stereo songs of the corpus as 16-bit WAV (decoded once, so every tool reads the same)."""
    from automaster.audio import read_audio, write_audio

    songs = []
    for path in sorted(corpus.rglob("*.mp3")):
        audio, sr = read_audio(str(path))
        if audio.shape[0] != 2 or audio.shape[1] < 29 * sr:
            continue
        target = tmp / "songs" / f"{path.stem}.wav"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_audio(str(target), audio / max(1.0, float(np.abs(audio).max())), sr, subtype="PCM_16")
        songs.append(target)
        if len(songs) == n:
            break
    return songs


def ffmpeg_two_pass(song: Path, out: Path) -> list[list[str]]:
    """The two ffmpeg commands of a two-pass loudnorm to -14 LUFS / -1 dBTP (the second filled in after the first)."""
    return [["ffmpeg", "-hide_banner", "-nostats", "-i", str(song), "-af", "loudnorm=I=-14:TP=-1:LRA=11:print_format=json",
             "-f", "null", "-"], ["ffmpeg", "-y", "-hide_banner", "-nostats", "-loglevel", "error", "-i", str(song)]]


def ffmpeg_file(song: Path, out: Path) -> dict[str, float]:
    """Both passes of ffmpeg's loudnorm on one file, as one figure."""
    first, second = ffmpeg_two_pass(song, out)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    measured = subprocess.run(first, capture_output=True, text=True, check=True).stderr
    m = json.loads(measured[measured.rindex("{"):])
    af = (f"loudnorm=I=-14:TP=-1:LRA=11:measured_I={m['input_i']}:measured_TP={m['input_tp']}:"
          f"measured_LRA={m['input_lra']}:measured_thresh={m['input_thresh']}:offset={m['target_offset']}:linear=true")
    subprocess.run(second + ["-af", af, "-ar", "44100", str(out)], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), "wall_s": time.perf_counter() - t}


def per_extra_file(one: dict[str, float], many: dict[str, float], n: int) -> float:
    return (many["cpu_s"] - one["cpu_s"]) / (n - 1)


def finish(result: dict[str, object], out: Path, name: str) -> None:
    result["load_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-{time.strftime('%Y-%m-%d')}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def long_files(song: Path, tmp: Path, minutes: list[float]) -> dict[str, dict[str, float]]:
    """Peak RSS, CPU and wall of ``automaster master --preset streaming`` on ``song`` looped to
    each length (written a block at a time: the bench holds no long file itself), with the
    output's loudness error and true peak, and whether it was streamed."""
    import soundfile as sf

    from automaster.audio import read_audio
    from automaster.dsp.loudness import integrated_loudness, true_peak_dbtp

    audio, sr = read_audio(str(song))
    out: dict[str, dict[str, float]] = {}
    for m in minutes:
        src, dst = tmp / f"long{m:g}.flac", tmp / f"long{m:g}.out.flac"
        with sf.SoundFile(src, "w", sr, audio.shape[0], subtype="PCM_16") as f:
            for start in range(0, int(m * 60 * sr), audio.shape[1]):
                f.write(audio[:, : min(audio.shape[1], int(m * 60 * sr) - start)].T)
        figures = run(AUTOMASTER + ["master", "--input", str(src), "--out", str(dst), "--preset", "streaming"])
        report = json.loads(Path(f"{dst}.report.json").read_text())
        figures["streamed"] = bool(report.get("streamed"))
        lufs, peak = report["lufs_out"], report["true_peak_out_dbtp"]  # past 20 minutes, the report's own
        if m <= 20:  # an independent measurement of the whole output (it fits in memory here)
            y, _ = read_audio(str(dst))
            lufs, peak = integrated_loudness(y, sr), true_peak_dbtp(y, sr)
            del y
        figures.update(lufs_error=abs(lufs + 14.0), true_peak_dbtp=peak, cpu_per_minute_s=figures["cpu_s"] / m)
        out[f"{m:g}"] = figures
        src.unlink()
        dst.unlink()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(HERE.parent / "shared" / "data" / "fma_mini"))
    p.add_argument("--songs", type=int, default=14)
    p.add_argument("--runs", type=int, default=5, help="runs of the one-file whole-process figure (median)")
    p.add_argument("--out", default=str(HERE / "bench" / "results"))
    p.add_argument("--minutes", type=float, nargs="+", default=[4, 10, 20, 40], help="lengths of the long-file runs")
    p.add_argument("--only-long", action="store_true", help="the long-file runs alone")
    args = p.parse_args()
    load = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-product-"))
    try:
        songs = prepare(Path(args.corpus), args.songs, tmp)
        n = len(songs)
        one_dir, many_dir = tmp / "one", tmp / "many"
        one_dir.mkdir()
        many_dir.mkdir()
        shutil.copy(songs[0], one_dir)
        for s in songs:
            shutil.copy(s, many_dir)
        result: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(),
                                     "cpus": os.cpu_count(), "load_start": load, "songs": n}
        if args.only_long:
            result["long_files"] = long_files(songs[0], tmp, args.minutes)
            return finish(result, Path(args.out), "product-long")
        # CPU per extra file, in one process each (a warm-up first: numba caches, page cache)
        run(AUTOMASTER + ["master", "--input", str(one_dir), "--out", str(tmp / "warm"), "--no-ray", "--workers", "1",
                          "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"])  # the store is created here, not timed
        am = {k: run(AUTOMASTER + ["master", "--input", str(d), "--out", str(tmp / f"am-{k}"), "--no-ray", "--workers", "1",
                                   "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"]) for k, d in (("one", one_dir), ("many", many_dir))}
        mg = {"one": run([PY, "-c", MATCHERING, str(songs[1]), *map(str, (one_dir / songs[0].name,))]),
              "many": run([PY, "-c", MATCHERING, str(songs[0]), *map(str, sorted(many_dir.glob("*.wav")))])}
        ff = [ffmpeg_file(s, tmp / f"{s.stem}.ffmpeg.flac") for s in songs]
        result["cpu_per_extra_file_s"] = {"automaster": per_extra_file(am["one"], am["many"], n),
                                          "matchering": per_extra_file(mg["one"], mg["many"], n),
                                          "ffmpeg_loudnorm_whole_process": statistics.median(f["cpu_s"] for f in ff)}
        result["batch"] = {"automaster": am, "matchering": mg}
        # one file as a whole process, against import torch
        single = [run(AUTOMASTER + ["master", "--input", str(songs[0]), "--out", str(tmp / f"single{i}.flac")]) for i in range(args.runs)]
        torch_import = [run([PY, "-c", "import torch"]) for _ in range(args.runs)]
        result["one_file_whole_process"] = {
            "automaster_wall_s": statistics.median(r["wall_s"] for r in single),
            "automaster_cpu_s": statistics.median(r["cpu_s"] for r in single),
            "import_torch_wall_s": statistics.median(r["wall_s"] for r in torch_import),
            "matchering_one_file_wall_s": mg["one"]["wall_s"], "matchering_one_file_cpu_s": mg["one"]["cpu_s"],
            "ffmpeg_one_file_wall_s": statistics.median(f["wall_s"] for f in ff),
        }
        # long stereo files: 10 minutes (the target) and longer, streamed past 5 minutes
        from automaster.audio import read_audio

        result["long_files"] = long_files(songs[0], tmp, args.minutes)
        result["ten_minutes"] = result["long_files"].get("10", {})
        # presets
        run(AUTOMASTER + ["master", "--input", str(many_dir), "--out", str(tmp / "streaming"), "--no-ray", "--preset", "streaming",
                          "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"])
        from automaster.dsp.loudness import integrated_loudness, true_peak_dbtp

        errors, peaks = [], []
        for f in sorted((tmp / "streaming" / "audio").glob("*")):
            y, sr = read_audio(str(f))
            errors.append(abs(integrated_loudness(y, sr) + 14.0))
            peaks.append(true_peak_dbtp(y, sr))
        result["preset_streaming"] = {"max_lufs_error": max(errors), "max_true_peak_dbtp": max(peaks)}
        finish(result, Path(args.out), "product")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
