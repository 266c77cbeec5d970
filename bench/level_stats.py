"""Which statistics and which model tell the original master's level best? (issue 21, item 3)

    python bench/level_stats.py --examples results/level/level_examples.npz [--out FILE.json]

Reads the examples of ``python -m automaster.training.level`` (``make retrain-level`` keeps them in
``results/level``): crops of the training and validation splits, each damaged by our chain (every
effect, and each effect alone), pedalboard's, or not at all, with the level model's 249 features
(the spectral head's 66, then the 183 waveform statistics) and the target in LU. Fits, on the
training rows, and measures on the validation rows (mean absolute error, LU, per damage):

* ``mlp-66-shipped-damages``: the previous level model's recipe (the spectral restorer's level
  head: an MLP 66-64-64-1 on the 66 features, L1, AdamW, 1,000 full-batch steps) on the damages
  it was fitted on (ours, pedalboard, none);
* ``models/spectral``: the previous shipped level model itself (fitted on other crops);
* ``trees-66``, ``trees-249-shipped-damages``, ``trees-249`` (the shipped recipe):
  :func:`automaster.training.level.fit_trees` on the 66 features, on all 249 with the previous
  damages only, and on all 249 with every default damage;
* ``trees-249+gain``: the same with the ``gain`` damage's rows too (the master turned down 1–18 dB),
  when the examples hold them (``--damages ... gain``);

next to the identity (the input's level kept). Rows of fma_mini's songs (six-digit ids) and of
the other corpora are also given apart. Deterministic for the examples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SPECTRAL = 66  # the spectral head's features come first
SHIPPED_BEFORE = ("ours", "pedalboard", "none")


def _mlp_head(x: np.ndarray, y: np.ndarray, steps: int = 1000, seed: int = 0):
    """The previous recipe: the spectral restorer's level head fitted full-batch (L1, AdamW 1e-3, cosine)."""
    import torch

    from automaster.model.spectral import SpectralRestorer

    torch.manual_seed(seed)
    model = SpectralRestorer(width=0)
    head = model.level_mlp
    for layer in head:
        if isinstance(layer, torch.nn.Linear):
            layer.reset_parameters()
    xs, ys = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=2e-5)
    for _ in range(steps):
        loss = (model.level_from_features(xs) - ys).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.level_from_features(torch.from_numpy(z).float()).numpy()

    return predict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", required=True, help="level_examples.npz of python -m automaster.training.level")
    p.add_argument("--spectral", default=str(REPO / "models" / "spectral"), help="the previous level model")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / f"level-stats-{time.strftime('%Y-%m-%d')}.json"))
    args = p.parse_args(argv)
    import torch

    from automaster.model.checkpoint import load_model
    from automaster.training.level import DAMAGES, fit_trees

    with np.load(args.examples, allow_pickle=False) as z:
        tr = {k: z[f"training_{k}"] for k in ("x", "y", "damage")}
        va = {k: z[f"validation_{k}"] for k in ("x", "y", "damage", "track")}
    before = np.isin(tr["damage"], SHIPPED_BEFORE)
    default = np.isin(tr["damage"], DAMAGES)
    spectral, _, _ = load_model(args.spectral)
    with torch.no_grad():
        shipped_before = spectral.level_from_features(torch.from_numpy(va["x"][:, :SPECTRAL]).float()).numpy()
    preds = {"identity": np.zeros_like(va["y"]), "models/spectral": shipped_before}
    fits = {
        "mlp-66-shipped-damages": lambda: _mlp_head(tr["x"][before, :SPECTRAL], tr["y"][before]),
        "trees-66": lambda: (lambda m: lambda v: m.level_from_features(v[:, :SPECTRAL]))(
            fit_trees(tr["x"][default, :SPECTRAL], tr["y"][default], 0)),
        "trees-249-shipped-damages": lambda: fit_trees(tr["x"][before], tr["y"][before], 0).level_from_features,
        "trees-249": lambda: fit_trees(tr["x"][default], tr["y"][default], 0).level_from_features,
    }
    if not default.all():
        fits["trees-249+gain"] = lambda: fit_trees(tr["x"], tr["y"], 0).level_from_features
    seconds = {}
    for name, make in fits.items():
        t0 = time.time()
        predict = make()
        seconds[name] = time.time() - t0
        xs = va["x"][:, :SPECTRAL] if name.startswith("mlp") else va["x"]
        preds[name] = predict(xs)
    fma = np.array([len(t) == 6 and t.isdigit() for t in va["track"]])
    damages = sorted(set(va["damage"].tolist()))
    report: dict = {"examples": args.examples, "training_rows": int(len(tr["y"])), "validation_rows": int(len(va["y"])),
                    "fit_seconds": seconds, "lu": {}}
    for group, mask in (("all", np.ones(len(fma), bool)), ("fma_mini", fma), ("other", ~fma)):
        table = {}
        for name, pred in preds.items():
            err = np.abs(pred - va["y"])
            row = {d: float(err[mask & (va["damage"] == d)].mean()) for d in damages if np.any(mask & (va["damage"] == d))}
            row["mean"] = float(np.mean([v for d, v in row.items() if d in DAMAGES]))  # the default damages
            table[name] = row
        report["lu"][group] = table
        print(f"\nvalidation, {group} ({int(mask.sum())} rows): mean absolute error, LU")
        print("| model | " + " | ".join(damages) + " | mean (no gain) |")
        print("|---|" + "---|" * (len(damages) + 1))
        for name, row in table.items():
            print(f"| {name} | " + " | ".join(f"{row.get(d, float('nan')):.2f}" for d in damages) + f" | {row['mean']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
