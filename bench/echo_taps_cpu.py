"""CPU seconds of the echo stage per 30 s stereo clip: one echo undone (``max_taps=1``, the stage
before multi-tap echoes) against up to ``MAX_ECHO_TAPS`` (the stage now).

    flock /tmp/heavy.lock python bench/echo_taps_cpu.py [--split validation] [--clips N] [--repeats 3]

For every clean clip of the fma_mini split (30 s, centred, stereo, 44.1 kHz): the clean clip, and the
clip with a three-tap echo (90, 200 and 330 ms at 0.35, 0.3, 0.25). Each goes through
:func:`automaster.mastering.policy.remove_echo` both ways, ``--repeats`` times (the least process CPU
time of the repeats counts: the machine is shared). Prints the median per clip and the taps found.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from automaster.audio import read_excerpt  # noqa: E402
from automaster.dsp.constants import MODEL_RATE  # noqa: E402
from automaster.mastering import MIN_ECHO_GAIN  # noqa: E402
from automaster.mastering.policy import remove_echo  # noqa: E402
from automaster.pipelines.evaluate import list_clean  # noqa: E402

TAPS = ((0.09, 0.35), (0.2, 0.3), (0.33, 0.25))


def _with_taps(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    for delay_s, gain in TAPS:
        d = round(delay_s * MODEL_RATE)
        out[:, d:] += gain * x[:, :-d]
    return out


def _cpu_s(x: np.ndarray, max_taps: int, repeats: int) -> tuple[float, int]:
    """Least CPU seconds over ``repeats`` runs of the stage, and the echoes it undid."""
    best, taps = float("inf"), 0
    for _ in range(repeats):
        t = time.process_time()
        _, note = remove_echo(x, MODEL_RATE, MIN_ECHO_GAIN, max_taps=max_taps)
        best, taps = min(best, time.process_time() - t), len(note["echo_taps"])
    return best, taps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(REPO.parent.parent / "shared" / "data" / "fma_mini"))
    p.add_argument("--split", default="validation", choices=["training", "validation", "test"])
    p.add_argument("--clips", type=int, default=0, help="at most this many clips (0: all)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows, _ = list_clean(args.corpus, args.split, args.clips)
    noise = np.random.default_rng(0).standard_normal((2, 10 * MODEL_RATE)).astype(np.float32)
    remove_echo(_with_taps(noise), MODEL_RATE, MIN_ECHO_GAIN)  # load the compiled IIRs before timing
    cpu: dict[str, list[float]] = {}
    for r in rows:
        x, _ = read_excerpt(r["path"], 30.0, sample_rate=MODEL_RATE, mono=False, min_seconds=30.0)
        x = np.ascontiguousarray(np.broadcast_to(x, (2, x.shape[-1])), dtype=np.float32)
        for kind, audio in (("clean", x), ("3 taps", _with_taps(x))):
            for max_taps in (1, 3):
                s, found = _cpu_s(audio, max_taps, args.repeats)
                cpu.setdefault(f"{kind}, max_taps={max_taps}", []).append(s)
                print(f"{r['track_id']} {kind:6s} max_taps={max_taps}: {s:.3f} CPU s, {found} echoes undone")
    for key, values in cpu.items():
        print(f"{key}: median {np.median(values):.3f} CPU s per 30 s stereo clip ({len(values)} clips)")


if __name__ == "__main__":
    main()
