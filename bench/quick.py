"""A short, real benchmark (`make bench`, under a minute): the bundled songs, looped to 30 s each,
mastered by the shipped default through ``automaster master`` in this process, without Ray, then
again with ``--pictures``; CPU seconds per file and how many times faster than real time.

    python bench/quick.py                       # tests/data/music, 3 timed rounds
    python bench/quick.py --music ~/mixes --seconds 0 --rounds 1   # your files as they are

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

import numpy as np

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


def master_round(music: Path, out: Path, store: str, extra: list[str]) -> tuple[float, float, dict]:
    """One ``automaster master`` of ``music`` into ``out``: (wall s, this process's CPU s, summary)."""
    from automaster.cli import main

    args = ["master", "--input", str(music), "--out", str(out), "--no-ray", "--overwrite", "--tracking-uri", store, *extra]
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # the job's own table, three times over
        code = main(args)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if code != 0:
        raise SystemExit(f"bench: automaster master exited {code}")
    return wall, cpu, json.loads((out / "summary.json").read_text())


def looped(music: Path, seconds: float, folder: Path) -> Path:
    """Every audio file under ``music``, looped (or cut) to ``seconds``, as WAVs in ``folder``
    (``seconds`` 0: ``music`` itself)."""
    from automaster.audio import is_audio_file, read_audio, write_audio

    if seconds <= 0:
        return music
    folder.mkdir()
    for path in sorted(p for p in music.rglob("*") if p.is_file() and is_audio_file(p.name)):
        audio, sr = read_audio(str(path))
        reps = -(-int(seconds * sr) // audio.shape[1])
        write_audio(str(folder / f"{path.name}.wav"), np.tile(audio, (1, reps))[:, : int(seconds * sr)], sr)
    return folder


def timed(music: Path, tmp: Path, store: str, rounds: int, extra: list[str]) -> tuple[float, float, dict]:
    """A warm-up round, then ``rounds`` timed ones: the fastest (by CPU time)."""
    master_round(music, tmp / "warm", store, extra)
    return min((master_round(music, tmp / f"round{i}", store, extra) for i in range(rounds)), key=lambda r: r[1])


def figures(wall: float, cpu: float, summary: dict) -> dict:
    """Per-file CPU and x-real-time figures of one round."""
    files, audio_s = summary["ok"], summary["audio_seconds_ok"]
    if not files:
        raise SystemExit("bench: no file was mastered")
    return {"files": files, "audio_s": audio_s, "wall_s": wall, "cpu_s": cpu, "cpu_s_per_file": cpu / files,
            "x_real_time_cpu": audio_s / cpu, "x_real_time_wall": audio_s / wall,
            "stage_seconds_mean": summary.get("stage_seconds_mean", {})}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--music", type=Path, default=HERE / "tests" / "data" / "music", help="folder of audio to master")
    parser.add_argument("--seconds", type=float, default=30.0, help="loop each file to this length (0: as it is)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (the fastest is kept)")
    parser.add_argument("--lock", type=Path, default=Path(tempfile.gettempdir()) / "bench.lock",
                        help="held while timing, so two benchmarks never share the cores (the one bench/ uses)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench", help="where the figures' JSON goes")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be >= 1")

    with held(args.lock), tempfile.TemporaryDirectory(prefix="automaster-bench-") as tmp_name:
        tmp = Path(tmp_name)
        load = os.getloadavg()[0]
        music = looped(args.music, args.seconds, tmp / "music")
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        print(f"bench: mastering {args.music} with the shipped default, then with --pictures "
              f"(a warm-up round each, then {args.rounds} timed)", flush=True)
        default = figures(*timed(music, tmp / "default", store, args.rounds, []))
        pictures = figures(*timed(music, tmp / "pictures", store, args.rounds, ["--pictures"]))
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "load_before": load, "music": str(args.music), "seconds": args.seconds, "default": default, "pictures": pictures}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"quick-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"bench: {default['files']} files, {default['audio_s']:.0f} s of audio, load {load:.1f} before ({result['machine']})"]
    for name, r in (("default", default), ("--pictures", pictures)):
        stages = ", ".join(f"{k.removeprefix('stage_').removesuffix('_s')} {v:.2f}" for k, v in r["stage_seconds_mean"].items())
        lines.append(f"  {name}: CPU {r['cpu_s_per_file']:.2f} s per file of {r['audio_s'] / r['files']:.0f} s: "
                     f"{r['x_real_time_cpu']:.0f}x real time on CPU time, {r['x_real_time_wall']:.0f}x on the wall clock; "
                     f"per file by stage: {stages}")
    print("\n".join(lines) + f"\n  figures: {path}\n"
          "The full benchmarks (every inversion, memory, Ray workers, training, the compressor): bench/*.py, "
          "figures with date, machine and load in BENCHMARKS.md")


if __name__ == "__main__":
    main()
