"""The most 2 training workers could reach here: independent single-thread processes, no Ray.

    python bench/bench_train_bound.py --data /tmp/automaster-damage --steps 5

Runs the training step of the default cascade (random 256-frame crops, forward, composite loss,
backward, clipping, Adam) on one torch thread, first in one process, then in ``--procs``
processes at once, with no Ray, no DDP and no data pipeline. Their summed crops/s over the single
process's is the scaling the cores allow; Ray Train with DDP cannot beat it. Prints the per-phase
times of a step (data, forward, loss, backward, optimiser) too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def steps_per_process(data: str, steps: int, seed: int, queue) -> None:
    import numpy as np
    import pyarrow as pa
    import torch

    from automaster.config import Config
    from automaster.dataset import DATASET_DIR, read_table
    from automaster.model.batches import collate, random_crops, rows_from_batch
    from automaster.model.cascade import Cascade
    from automaster.model.losses import CompositeLoss
    from automaster.pipelines.train import _COLUMNS

    torch.set_num_threads(1)
    config = Config()
    tc, audio = config.train, config.audio
    files = sorted(Path(data, DATASET_DIR).glob("*.parquet"))[: tc.rows_per_batch]
    table = pa.concat_tables([read_table(str(f), columns=_COLUMNS) for f in files])
    columns = {c: table.column(c).to_numpy(zero_copy_only=False)[: tc.rows_per_batch] for c in table.column_names}
    rows = rows_from_batch(columns)
    crops_per_row = max(1, tc.batch_size // len(rows))  # one step's batch from rows_per_batch rows
    torch.manual_seed(seed)
    model = Cascade.from_config(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    loss_fn = CompositeLoss(config.loss, db_range=audio.db_max - audio.db_min)
    rng = np.random.default_rng(seed)
    phases = dict.fromkeys(("data", "forward", "loss", "backward", "optimizer"), 0.0)
    for step in range(steps + 1):  # step 0 warms up
        t = [time.perf_counter()]
        batch = collate(random_crops(rows, tc.crop_frames, crops_per_row, rng, audio), audio, audio.sample_rate)
        t.append(time.perf_counter())
        outputs = model(batch["mel_degraded"])
        t.append(time.perf_counter())
        total, _ = loss_fn(outputs, batch)
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        t.append(time.perf_counter())
        if step == 0:
            t0, cpu0 = t[-1], time.process_time()
            continue
        for name, a, b in zip(phases, t, t[1:]):
            phases[name] += b - a
    wall = time.perf_counter() - t0
    queue.put({"crops_per_s": steps * len(batch["mel_degraded"]) / wall, "s_per_step": wall / steps,
               "cpu_per_wall": (time.process_time() - cpu0) / wall,
               "phases_s": {k: round(v / steps, 3) for k, v in phases.items()}})  # fmt: skip


def run(data: str, steps: int, procs: int) -> list[dict]:
    queue = mp.get_context("spawn").Queue()
    ps = [mp.get_context("spawn").Process(target=steps_per_process, args=(data, steps, i, queue)) for i in range(procs)]
    for p in ps:
        p.start()
    results = [queue.get() for _ in ps]
    for p in ps:
        p.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="/tmp/automaster-damage")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    one = run(args.data, args.steps, 1)
    many = run(args.data, args.steps, args.procs)
    record = {
        "one_process": one[0],
        f"{args.procs}_processes": many,
        "bound_scaling": sum(r["crops_per_s"] for r in many) / one[0]["crops_per_s"],
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
