"""What ``--pictures`` costs per file (issue 20: "a per-file report picture, when asked for, costs at
most 0.3 s"), on 30 s stereo songs of fma_mini, in this process, one thread of work at a time.

    flock /tmp/heavy.lock python bench/bench_report.py --songs 5 --rounds 5
    flock /tmp/heavy.lock python bench/bench_report.py --repo /tmp/before --label before   # older code

For each song, the minimum over ``--rounds`` (after a warm-up) of:

* **end to end**: the jobs' per-file path (:func:`automaster.pipelines.master.master_file`: decode,
  master, write the audio, the report and, with pictures, ``report.png``, ``.spectrogram.png`` and
  the debug picture) with and without pictures; the extra cost is the difference of the minima;
* its parts: the mels the masterer keeps for pictures (``master_audio(images=True)`` minus
  ``images=False``), the report's curves (``build_report(curves=True)`` minus ``curves=False``),
  drawing and encoding ``report.png`` (``report_png``) and the spectrogram pictures (``images``).

Seconds are wall time and this process's CPU time (user + system); the load average is printed at
the start and the end: on the shared 2-core machine, figures compare only within a run. Only APIs
that older commits have are used, so ``--repo`` measures them with the same script. Writes
``bench/results/report-<date>[-label].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def best(fn, rounds: int) -> tuple[float, float]:
    """``(wall s, CPU s)``: the fastest of ``rounds`` calls of ``fn`` by CPU time."""
    runs = []
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t, time.process_time() - c))
    return min(runs, key=lambda r: r[1])


def measure(song: Path, model: str, tmp: Path, rounds: int) -> dict[str, float]:
    """The extra seconds of pictures for one song (end to end and by part)."""
    from automaster.audio import read_audio
    from automaster.mastering import Masterer
    from automaster.mastering.report import build_report, estimates, report_png
    from automaster.pipelines.master import images, master_file

    masterer = Masterer(model)
    counter = iter(range(10**6))

    def file(pictures: bool) -> None:
        status = master_file(masterer, str(song), str(tmp / f"out{next(counter)}"), song.name, pictures=pictures)
        if status["status"] != "ok":
            raise SystemExit(f"bench: {song}: {status['reason']}")

    out: dict[str, float] = {}
    file(True), file(False)  # warm-up: the model, numba's caches, fonts
    plain, pics = best(lambda: file(False), rounds), best(lambda: file(True), rounds)
    out.update(file_s=plain[0], file_cpu_s=plain[1], pictures_file_s=pics[0], pictures_file_cpu_s=pics[1],
               extra_s=pics[0] - plain[0], extra_cpu_s=pics[1] - plain[1])

    audio, sr = read_audio(str(song))
    mastered, levels = masterer.master_audio(audio, sr, images=True)
    finished, arrays = levels.pop("finish"), levels.pop("arrays")
    est = estimates(levels)

    def report(curves: bool) -> dict:
        return build_report(song.name, audio, mastered, sr, finished, est, masterer.reference, {}, curves=curves, levels=levels)

    full = report(True)
    parts = {
        "mels_s": best(lambda: masterer.master_audio(audio, sr, images=True), rounds)[1]
        - best(lambda: masterer.master_audio(audio, sr, images=False), rounds)[1],
        "curves_s": best(lambda: report(True), rounds)[1] - best(lambda: report(False), rounds)[1],
        "report_png_s": best(lambda: report_png(full), rounds)[1],
        "spectrogram_s": best(lambda: images(masterer.audio_cfg, arrays), rounds)[1],
    }
    out.update(parts, report_png_bytes=len(report_png(full)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=str(HERE.parent / "shared" / "data" / "fma_mini"))
    p.add_argument("--songs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--model", default=str(HERE / "models" / "reference"))
    p.add_argument("--repo", help="measure the automaster package of this checkout instead of this one")
    p.add_argument("--label", default="")
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.repo).resolve() if args.repo else HERE))
    sys.path.insert(1, str(HERE / "bench"))
    from bench_product import prepare

    import automaster

    load_start = os.getloadavg()
    print(f"bench: automaster from {Path(automaster.__file__).parent}; load {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        songs = prepare(Path(args.corpus), args.songs, tmp)
        rows = {}
        for song in songs:
            rows[song.stem] = measure(song, args.model, tmp, args.rounds)
            r = rows[song.stem]
            print(f"{song.stem}: extra {r['extra_s']:.3f} s wall, {r['extra_cpu_s']:.3f} s CPU (file {r['file_cpu_s']:.3f} -> "
                  f"{r['pictures_file_cpu_s']:.3f}); mels {r['mels_s']:.3f}, curves {r['curves_s']:.3f}, report.png "
                  f"{r['report_png_s']:.3f} ({r['report_png_bytes'] // 1000} kB), spectrogram {r['spectrogram_s']:.3f}", flush=True)
    load_end = os.getloadavg()
    median = {k: statistics.median(r[k] for r in rows.values()) for k in next(iter(rows.values()))}
    print(f"median of {len(rows)} songs: extra {median['extra_s']:.3f} s wall, {median['extra_cpu_s']:.3f} s CPU; mels "
          f"{median['mels_s']:.3f}, curves {median['curves_s']:.3f}, report.png {median['report_png_s']:.3f}, spectrogram "
          f"{median['spectrogram_s']:.3f}; load at the end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
              "cpus": os.cpu_count(), "load_start": load_start, "load_end": load_end, "repo": args.repo or str(HERE),
              "rounds": args.rounds, "songs": rows, "median": median}
    name = f"report-{time.strftime('%Y-%m-%d', time.gmtime())}{'-' + args.label if args.label else ''}.json"
    (HERE / "bench" / "results" / name).write_text(json.dumps(record, indent=1))
    print(f"bench: wrote bench/results/{name}")


if __name__ == "__main__":
    main()
