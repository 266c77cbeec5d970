"""What two cores of this machine give: each workload alone, then two copies at once.

    python bench/bench_cores.py

A pure-Python loop, a float32 matmul, a torch conv forward/backward and a streaming numpy
update, each on one thread. If two copies run as fast as one, the cores are independent for
that kind of work; a slowdown is shared memory bandwidth / cache (or SMT siblings). This is the
ceiling for every 1 -> 2 worker scaling figure in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
KINDS = ("python", "matmul", "conv", "stream")


def work(kind: str) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    if kind == "python":
        s = 0
        for i in range(6_000_000):
            s += i * i
    elif kind == "matmul":
        a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
        for _ in range(300):
            a @ a
    elif kind == "conv":
        m = torch.nn.Conv2d(16, 16, 3, padding=1)
        x = torch.randn(8, 16, 128, 256)
        for _ in range(6):
            m(x).sum().backward()
    else:
        a = np.random.default_rng(0).random(20_000_000)
        for _ in range(20):
            a = a * 1.0001 + 1


def child(kind: str) -> None:
    work(kind)  # warm
    t = time.perf_counter()
    work(kind)
    print(time.perf_counter() - t)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average_at_start": os.getloadavg()}
    for kind in KINDS:
        cmd = [sys.executable, __file__, "--child", kind]
        alone = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        pair = [float(p.communicate()[0]) for p in procs]
        result[kind] = {"alone_s": alone, "pair_s": pair, "pair_slowdown": max(pair) / alone, "throughput_x": 2 * alone / max(pair)}
        print(f"{kind:7s} alone {alone:.3f} s, two at once {pair[0]:.3f} / {pair[1]:.3f} s -> {2 * alone / max(pair):.2f}x")
    path = os.path.join(os.path.dirname(__file__), "results", f"cores-{time.strftime('%Y-%m-%d')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print("->", path)


if __name__ == "__main__":
    main()
