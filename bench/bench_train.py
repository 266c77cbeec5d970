"""Training throughput on Ray Train: crops/s with 1 and 2 workers, model size, time per epoch.

    python bench/bench_demaster.py ...   # or bench/bench_damage.py, which leaves a paired dataset
    python bench/bench_train.py --data /tmp/automaster-damage --epochs 1

Each configuration runs the real training job (``run_train``) in a fresh process with its own
local Ray; the figures are the job's own ``perf/crops_per_s`` and ``perf/epoch_s`` (the training
pass of an epoch, validation excluded) from the last epoch.

On a shared machine the figures are only as good as the quiet around them: Ray runs its workers
at nice 15 (``RAY_worker_niceness``), so any other busy process takes most of a core from a
training worker, and DDP's lockstep makes the other worker wait too. Each run records the load
average before it and ``other_cpu_cores``, the CPU that processes outside the job used during it
(in cores, sampled from /proc); distrust a 2-worker figure measured with more than ~0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cpu_ticks() -> dict[int, tuple[int, int]]:
    """Per live process: (parent pid, utime + stime in clock ticks)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:  # gone meanwhile
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            out[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


class OtherCPU:
    """CPU seconds used by processes that are not ``root`` or its descendants, while running."""

    def __init__(self, root: int, interval_s: float = 1.0) -> None:
        self.root, self.interval_s, self.seconds = root, interval_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _ours(self, pid: int, procs: dict[int, tuple[int, int]]) -> bool:
        while pid > 1:
            if pid in (self.root, os.getpid()):
                return True
            pid = procs.get(pid, (0, 0))[0]
        return False

    def _run(self) -> None:
        before = _cpu_ticks()
        while not self._stop.wait(self.interval_s):
            now = _cpu_ticks()
            ticks = sum(t - before[p][1] for p, (_, t) in now.items() if p in before and not self._ours(p, now))
            self.seconds += ticks / os.sysconf("SC_CLK_TCK")
            before = now

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.seconds


def run(data: str, workers: int, epochs: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        cmd = [sys.executable, "jobs/train.py", "--data", data, "--out", f"{tmp}/out", "--workers", str(workers),
               "--epochs", str(epochs), "--tracking-uri", uri, "--run-name", f"bench-w{workers}", *extra]  # fmt: skip
        load = os.getloadavg()[0]
        t0 = time.time()
        job = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        other = OtherCPU(job.pid)
        output, _ = job.communicate()
        wall = time.time() - t0
        other_s = other.stop()
        if job.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({job.returncode}):\n{output.decode()[-4000:]}")
        import mlflow

        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("automaster-train")
        run_ = client.search_runs([exp.experiment_id])[0]
        m = run_.data.metrics
        return {"workers": workers, "crops_per_s": m["perf/crops_per_s"], "epoch_train_s": m["perf/epoch_s"],
                "job_wall_s": wall, "val_mel_l1_db": m.get("val/mel_l1_db"),
                "load_1min_before": load, "other_cpu_cores": other_s / wall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="/tmp/automaster-damage")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--suffix", default="", help="results file train-<date><suffix>.json")
    args = parser.parse_args()
    extra = [x for s in args.set for x in ("--set", s)]
    from automaster.config import load_config
    from automaster.model.cascade import Cascade

    config = load_config(overrides=args.set)
    n_params = Cascade.from_config(config).n_parameters()
    results = [run(args.data, w, args.epochs, extra) for w in (1, 2)]
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch CPU",
        "model_parameters": n_params,
        "model_mb_fp32": n_params * 4 / 2**20,
        "config_overrides": args.set,
        "runs": results,
        "scaling_1_to_2": results[1]["crops_per_s"] / results[0]["crops_per_s"],
    }
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / f"train-{record['date']}{args.suffix}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
