"""Training throughput on Ray Train: crops/s with 1 and 2 workers, model size, time per epoch.

    python bench/bench_demaster.py ...   # or bench/bench_damage.py, which leaves a paired dataset
    python bench/bench_train.py --data /tmp/automaster-damage --epochs 1

Each configuration runs the real training job (``run_train``) in a fresh process with its own
local Ray; the figures are the job's own ``perf/crops_per_s`` and ``perf/epoch_s`` (the training
pass of an epoch, validation excluded) from the last epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(data: str, workers: int, epochs: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        cmd = [sys.executable, "jobs/train.py", "--data", data, "--out", f"{tmp}/out", "--workers", str(workers),
               "--epochs", str(epochs), "--tracking-uri", uri, "--run-name", f"bench-w{workers}", *extra]  # fmt: skip
        t0 = time.time()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        wall = time.time() - t0
        import mlflow

        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("automaster-train")
        run_ = client.search_runs([exp.experiment_id])[0]
        m = run_.data.metrics
        return {"workers": workers, "crops_per_s": m["perf/crops_per_s"], "epoch_train_s": m["perf/epoch_s"],
                "job_wall_s": wall, "val_mel_l1_db": m.get("val/mel_l1_db")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="/tmp/automaster-damage")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--set", action="append", default=[])
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
    (REPO / "bench" / "results" / f"train-{record['date']}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
