"""Throughput of the Ray-free training core: crops/s on one device, one process.

    python bench/bench_core.py --audio ../shared/data/fma_mini --steps 20 [--device cuda] [--threads 1] [--set k=v ...]

Configurations (each a fresh model, the same fresh-damage source, batch ``--batch``):

* ``data``: fresh damage alone (crop, draw, degrade; no model);
* ``spectral``: the spectral restorer with its waveform losses (MR-STFT + L1 + level, through the iSTFT);
* ``spectral_no_wave``: the spectral restorer on its level loss only (no waveform loss);
* ``cascade_mel``: the thesis cascade on mel losses only (``loss.perceptual = 0``);
* ``cascade_wave``: the cascade with its waveform term (the inverse chain under autograd).

Prints one JSON line per configuration with the load average before it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {
    "data": [],
    "spectral": ["model.mode=spectral"],
    "spectral_no_wave": ["model.mode=spectral", "loss.mrstft=0", "loss.wave_l1=0", "loss.log_zero_terms=false"],
    "cascade_mel": ["model.mode=cascade", "model.unet_width=16", "loss.perceptual=0", "loss.log_zero_terms=false"],
    "cascade_wave": ["model.mode=cascade", "model.unet_width=16", "loss.perceptual=0.1"],
}


def bench(name: str, bank, args) -> dict:
    import torch

    from automaster.config import load_config
    from automaster.model.checkpoint import build_model
    from automaster.training.loop import make_loss, model_inputs
    from automaster.training.sources import _fresh_source

    sets = [*CONFIGS[name], f"train.batch_size={args.batch}", f"train.crop_seconds={args.crop_seconds}",
            f"train.steps_per_epoch={args.steps + 1}", *(args.set if name != "data" else [])]  # fmt: skip
    config = load_config(overrides=sets)
    source = _fresh_source(bank, [], config, {})
    device = torch.device(args.device)
    model = build_model(config).to(device) if name != "data" else None
    loss_fn = make_loss(config).to(device) if model is not None else None
    opt = torch.optim.AdamW(model.parameters(), 1e-3) if model is not None else None
    batches = source.epoch_batches(0, 0, 1, device)
    load = os.getloadavg()[0]
    t0 = None
    for i, batch in enumerate(batches):
        if i == 1:  # the first step warms up (numba, allocator, cuDNN)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if model is not None:
            total, _ = loss_fn(model_inputs(model, config, batch), batch)
            opt.zero_grad()
            total.backward()
            opt.step()
        if i == args.steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {"config": name, "crops_per_s": round(args.steps * args.batch / seconds, 2), "batch": args.batch,
           "crop_seconds": args.crop_seconds, "device": args.device, "threads": torch.get_num_threads(),
           "load_before": round(load, 2)}  # fmt: skip
    if model is not None:
        out["parameters"] = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--audio", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop-seconds", type=float, default=1.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", default=list(CONFIGS))
    p.add_argument("--limit", type=int, default=20, help="tracks decoded into the bank")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override for every model configuration")
    args = p.parse_args()
    import torch

    from automaster.training.bank import bank_from_corpus

    torch.set_num_threads(args.threads)
    bank = bank_from_corpus([args.audio], ("training",), limit=args.limit)
    for name in args.only:
        print(json.dumps(bench(name, bank, args)), flush=True)


if __name__ == "__main__":
    main()
