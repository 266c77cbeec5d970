"""A short, real benchmark (`make bench`, a minute or two): the bundled songs mastered by the shipped
default through ``automaster master``, in this process, without Ray; CPU seconds per file and how
many times faster than real time.

    python bench/quick.py                       # tests/data/music, 2 timed rounds
    python bench/quick.py --music ~/mixes --rounds 1

A first, untimed round loads the model and compiles what numba compiles; each timed round then
masters every file again (``--overwrite``) and the fastest round is kept. The figures include
decoding, the echo stage, the level model, the limiter, writing the audio and the report: what a
user waits for, less Python's start-up. The machine's load average is printed with them: on shared
cores CPU seconds are the figure to compare. Two benchmarks at once would distort each other, so
the run holds a lock (``--lock``) and waits for any other holder. The full benchmarks (every
inversion, memory, Ray workers, training, the compressor) are the other scripts in ``bench/``; their
figures, with date, machine and load, are in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def held(lock_path: Path):
    """Hold an exclusive ``flock`` on ``lock_path`` (waiting, and saying so, while another run has it)."""
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"bench: waiting for {lock_path} (another benchmark is running)", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def master_round(music: Path, out: Path, store: str) -> tuple[float, float, dict]:
    """One ``automaster master`` of ``music`` into ``out``: (wall s, this process's CPU s, summary)."""
    from automaster.cli import main

    args = ["master", "--input", str(music), "--out", str(out), "--no-ray", "--overwrite", "--tracking-uri", store]
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # the job's own table, three times over
        code = main(args)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if code != 0:
        raise SystemExit(f"bench: automaster master exited {code}")
    return wall, cpu, json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--music", type=Path, default=HERE / "tests" / "data" / "music", help="folder of audio to master")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (the fastest is kept)")
    parser.add_argument("--lock", type=Path, default=Path(tempfile.gettempdir()) / "bench.lock",
                        help="held while timing, so two benchmarks never share the cores (the one bench/ uses)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench", help="where the figures' JSON goes")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be >= 1")

    with held(args.lock), tempfile.TemporaryDirectory(prefix="automaster-bench-") as tmp:
        load = os.getloadavg()[0]
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        print(f"bench: mastering {args.music} with the shipped default (a warm-up round, then {args.rounds} timed)", flush=True)
        master_round(args.music, Path(tmp) / "warm", store)
        rounds = [master_round(args.music, Path(tmp) / f"round{i}", store) for i in range(args.rounds)]
    wall, cpu, summary = min(rounds, key=lambda r: r[1])
    files, audio_s = summary["ok"], summary["audio_seconds_ok"]
    if not files:
        raise SystemExit("bench: no file was mastered")
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_before": load,
        "files": files, "audio_s": audio_s, "wall_s": wall, "cpu_s": cpu, "cpu_s_per_file": cpu / files,
        "x_real_time_cpu": audio_s / cpu, "x_real_time_wall": audio_s / wall,
        "stage_seconds_mean": summary.get("stage_seconds_mean", {}),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"quick-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    stages = ", ".join(f"{k.removeprefix('stage_').removesuffix('_s')} {v:.2f}" for k, v in result["stage_seconds_mean"].items())
    print(
        f"bench: {files} files, {audio_s:.0f} s of audio, load {load:.1f} before ({result['machine']})\n"
        f"  CPU {cpu / files:.2f} s per file ({audio_s / files:.0f} s of audio each): {result['x_real_time_cpu']:.1f}x real time "
        f"on CPU time, {result['x_real_time_wall']:.1f}x on the wall clock ({wall:.1f} s for all)\n"
        f"  seconds per file by stage: {stages}\n"
        f"  figures: {path}\n"
        "The full benchmarks (every inversion, memory, Ray workers, training, the compressor): bench/*.py, "
        "figures with date, machine and load in BENCHMARKS.md"
    )


if __name__ == "__main__":
    main()
