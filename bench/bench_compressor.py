"""Compressor forward + backward per backend (numba kernels vs the torch scans), in crops/s.

    flock /tmp/bench.lock python bench/bench_compressor.py [--batch 16] [--seconds 3] [--device cpu]

Differentiable path (audio and parameters require grad, as in waveform-domain training): the
compressor, and its inverse (whose feedback recursion stays in numba; ``backend`` then sets its
gradient's detector), on a batch of stereo 44.1 kHz crops of real music (tests/data/music, tiled), then a
loss over every sample and its backward. Prints one JSON line per backend, with the load average
and the policy-iteration rounds of the torch path.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from automaster.effects import compressor, compressor_inverse  # noqa: E402
from automaster.effects.ballistics import ballistics_forward  # noqa: E402
from automaster.effects.compressor import RMS_TIME_S, one_pole_ballistics, time_coef  # noqa: E402


def _crops(batch: int, seconds: float, device: str) -> torch.Tensor:
    """``(batch, 2, T)`` crops cut at different offsets of the test music."""
    n = int(seconds * 44100)
    clips = [sf.read(p, dtype="float32", always_2d=True)[0].T for p in sorted((REPO / "tests/data/music").glob("*.flac"))]
    out = []
    for i in range(batch):
        clip = clips[i % len(clips)]
        start = (i * 7919) % max(1, clip.shape[1] - n)
        out.append(torch.from_numpy(clip[:, start : start + n].copy()))
    return torch.stack(out).to(device)


def _settings(batch: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lo_hi = dict(threshold_db=(-36, -12), ratio=(1.5, 8), knee_db=(0, 12), attack_ms=(2, 50), release_ms=(30, 500), makeup_db=(0, 6))
    return {k: (lo + (hi - lo) * torch.rand(batch, generator=g)).to(device).requires_grad_() for k, (lo, hi) in lo_hi.items()}


def _step(x: torch.Tensor, settings: dict[str, torch.Tensor], backend: str, effect=compressor) -> None:
    xg = x.clone().requires_grad_()
    y = effect(xg, 44100, **settings, backend=backend)
    y.square().mean().backward()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = _crops(args.batch, args.seconds, args.device)
    settings = _settings(args.batch, args.device)
    with torch.no_grad():  # the ballistics' input: the RMS-windowed power
        a_rms = torch.full((args.batch,), math.exp(-1.0 / (RMS_TIME_S * 44100)), device=args.device)
        power = one_pole_ballistics(x.square().mean(1), a_rms, a_rms, backend="torch")
        rounds = ballistics_forward(power, time_coef(settings["attack_ms"] / 1000, 44100), time_coef(settings["release_ms"] / 1000, 44100))[2]
    for (name, effect), backend in itertools.product((("compressor", compressor), ("inverse", compressor_inverse)), ("numba", "torch")):
        _step(x, settings, backend, effect)  # warm-up (numba compile, allocator)
        times = []
        for _ in range(args.repeats):
            if args.device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            _step(x, settings, backend, effect)
            if args.device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        best = min(times)
        print(json.dumps({"effect": name, "backend": backend, "device": args.device, "threads": args.threads, "batch": args.batch,
                          "seconds": args.seconds, "step_s": round(best, 4), "crops_per_s": round(args.batch / best, 1),
                          "torch_rounds": rounds, "loadavg_1m": os.getloadavg()[0]}))  # fmt: skip


if __name__ == "__main__":
    main()
