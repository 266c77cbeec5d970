"""What the ranks agree on: sums, means and a stop flag over a real gloo process group of two."""

from __future__ import annotations

import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: dict) -> None:
    from automaster.training.loop import _agree_any, _mean_over_ranks, _sum_over_ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mean = _mean_over_ranks({"a": float(rank), "b": 10.0 * (rank + 1)})
        totals = _sum_over_ranks({"x": (1.5 * (rank + 1), rank + 1)} if rank == 0 else {}, ["x", "y"])
        stop = _agree_any(rank == 1), _agree_any(False)
        out[rank] = (mean, totals, stop)
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_means_sums_and_a_stop_that_one_rank_raised():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        mean, totals, stop = results[rank]
        assert mean == {"a": 0.5, "b": 15.0}
        assert totals == {"x": (1.5, 1)}  # "y" had no count anywhere: left out
        assert stop == (True, False)  # rank 1's time limit stops both; nobody's stops neither
