"""Per-damage diagnosis: one effect at a time, and what each repair path undoes.

    python bench/diagnose.py [--split test] [--clips 10] [--seconds 10] [--models models/reference ...]

Clean clips (a corpus split, centred excerpts at 44.1 kHz) are damaged by the project chain
(:func:`automaster.degrade.degrade`) with one effect drawn as in the demaster job and every other
effect neutral (:func:`automaster.effects.params.neutral_params`): ``eq``, ``compressor``,
``reverb``, ``echo``, and ``level`` (a gain drawn uniformly over the ``output_gain_db`` range,
the chain otherwise neutral). The degrader's headroom gain applies as in the job. Paths:

* ``identity``: the damaged input;
* ``oracle_inverse``: the inverse chain with the true parameters (evaluation's ``oracle_chain``);
* ``oracle_gain``: the damaged input gain-matched to the clean integrated loudness
  (evaluation's ``identity_loudness``);
* ``<model>:<inversion>``: :class:`automaster.mastering.Masterer` (echo stage included) for every
  ``--models`` checkpoint and ``--inversions`` entry.

Measures against the clean clip: SI-SDR (dB), MR-STFT distance and mel L1 (dB), measured as
``automaster evaluate`` measures them (:class:`automaster.evaluation.metrics.Reference`). Writes the per-clip rows and the means to ``--out`` (JSON) and prints a
Markdown table of the means.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from automaster.audio import read_excerpt  # noqa: E402
from automaster.config import AudioConfig, DegradeConfig  # noqa: E402
from automaster.degrade import clip_rms_db, degrade, draw_params, make_generator, only_effects  # noqa: E402
from automaster.dsp.constants import MODEL_RATE  # noqa: E402
from automaster.dsp.loudness import integrated_loudness  # noqa: E402
from automaster.effects.params import BY_NAME  # noqa: E402
from automaster.evaluation.baselines import identity_loudness, oracle_chain  # noqa: E402
from automaster.evaluation.metrics import Reference  # noqa: E402
from automaster.pipelines.evaluate import list_clean  # noqa: E402

DAMAGES = ("eq", "compressor", "reverb", "echo", "level")
MEASURES = ("si_sdr_db", "mrstft", "mel_l1_db")


def damage_one(clean: np.ndarray, track_id: str, seed: int, damage: str, hop: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """``(damaged (C, T), true parameters)``: ``damage`` drawn as the demaster job draws it, the
    rest of the chain neutral."""
    gen = make_generator(seed, track_id)
    n_frames = 1 + clean.shape[-1] // hop
    drawn = draw_params(n_frames, gen, DegradeConfig(), clip_rms_db=clip_rms_db(clean))
    params = only_effects(drawn, (damage,) if damage != "level" else ())
    result = degrade(torch.from_numpy(clean)[None], MODEL_RATE, params, gen)
    audio, truth = result.audio, dict(result.params)
    if damage == "level":
        spec = BY_NAME["output_gain_db"]
        gain_db = spec.low + (spec.high - spec.low) * torch.rand(1, generator=gen)
        audio = audio * torch.pow(10.0, gain_db / 20.0)
        truth["output_gain_db"] = truth["output_gain_db"] + gain_db
    return audio[0].numpy().astype(np.float32), truth


def _masterers(models: list[str], inversions: list[str]) -> dict[str, object]:
    from automaster.mastering import Masterer

    return {f"{Path(m).name}:{inv}": Masterer(m, inversion=inv) for m in models for inv in inversions}


def clip_parser(doc: str, name: str, clips: int) -> argparse.ArgumentParser:
    """The options of a bench that damages centred clips of a corpus split: ``--corpus``,
    ``--split``, ``--clips``, ``--seconds``, ``--seed`` and ``--out`` (``<name>-<date>.json``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "fma_mini"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--clips", type=int, default=clips)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / f"{name}-{time.strftime('%Y-%m-%d')}.json"))
    return parser


def clean_clips(args: argparse.Namespace, audio_cfg: AudioConfig) -> Iterator[tuple[dict, np.ndarray, Reference]]:
    """``(row, clean (C, T), Reference)`` for each clip of ``args``' corpus split (centred,
    ``args.seconds`` at 44.1 kHz), progress on stderr."""
    rows, _ = list_clean(args.corpus, args.split, args.clips)
    for row in rows:
        clean, _ = read_excerpt(row["path"], args.seconds, sample_rate=MODEL_RATE, mono=False, min_seconds=args.seconds)
        yield row, clean, Reference(clean, audio_cfg, integrated_loudness(clean, MODEL_RATE))
        print(f"{row['track_id']} done", file=sys.stderr)


def measure_rows(reference: Reference, outputs: dict[str, np.ndarray], track_id: str, damage: str) -> list[dict]:
    """One row per output path: its measures against the clean clip (sample-aligned)."""
    rows = []
    for path, out in outputs.items():
        measured = reference.measure(np.asarray(out, dtype=np.float32), aligned=True)
        rows.append({"track_id": track_id, "damage": damage, "path": path, **{k: measured[k] for k in MEASURES}})
    return rows


def report(args: argparse.Namespace, results: list[dict]) -> None:
    """Write the settings, means and rows to ``args.out`` (JSON) and print the means' table."""
    means = mean_by_damage(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    clips = len({r["track_id"] for r in results})
    Path(args.out).write_text(json.dumps({"settings": settings, "clips": clips, "means": means, "rows": results}, indent=1))
    print(table(means))


def mean_by_damage(results: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``{damage: {path: {measure: mean over the clips}}}`` from per-clip rows."""
    lists: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in results:
        entry = lists.setdefault(r["damage"], {}).setdefault(r["path"], {k: [] for k in MEASURES})
        for k in MEASURES:
            entry[k].append(r[k])
    return {d: {p: {k: float(np.mean(v)) for k, v in m.items()} for p, m in paths.items()} for d, paths in lists.items()}


def table(means: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| damage | path | SI-SDR dB | MR-STFT | mel L1 dB |", "|---|---|---|---|---|"]
    for damage, paths in means.items():
        for path, m in paths.items():
            lines.append(f"| {damage} | {path} | {m['si_sdr_db']:.2f} | {m['mrstft']:.3f} | {m['mel_l1_db']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = clip_parser(__doc__, "diagnose", clips=10)
    parser.add_argument("--damages", nargs="+", default=list(DAMAGES), choices=DAMAGES)
    parser.add_argument("--models", nargs="*", default=[str(REPO / "models" / "reference")])
    parser.add_argument("--inversions", nargs="+", default=["chain", "mask"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    audio_cfg = AudioConfig()
    masterers = _masterers(args.models, args.inversions)
    results = []
    for row, clean, reference in clean_clips(args, audio_cfg):
        for damage in args.damages:
            damaged, truth = damage_one(clean, row["track_id"], args.seed, damage, audio_cfg.hop_length)
            outputs = {
                "identity": damaged,
                "oracle_inverse": oracle_chain(damaged, truth, audio_cfg.hop_length),
                "oracle_gain": identity_loudness(damaged, reference.lufs),
            }
            for name, masterer in masterers.items():
                outputs[name] = masterer.master_audio(damaged, MODEL_RATE)[0]
            results += measure_rows(reference, outputs, row["track_id"], damage)
    report(args, results)


if __name__ == "__main__":
    main()
