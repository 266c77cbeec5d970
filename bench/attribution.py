"""Attribution of every mastering stage: each stage alone, the default, the default without its ceiling.

    flock /tmp/heavy.lock python bench/attribution.py --split test [--sets fma,music] [--seconds 10] [--jobs 2]

Clean clips (centred ``--seconds`` excerpts at 44.1 kHz, stereo): a split of an FMA root
(``--corpus``; the evaluate job's listing) and, with ``--sets ...,music``, every excerpt of a plain
folder (``--music``; never used in training). Each clip is damaged as ``automaster evaluate``
damages it (seed 1 with the track id; the clean clip's peak brought to 0.999 first): our chain with
every effect (``ours``), with one effect alone (``eq``, ``compressor``, ``reverb``, ``echo``: the
others neutral, the same draw), and pedalboard's chain (``pedalboard``). Paths:

* ``identity``: the damaged input; ``oracle-gain``: the damaged input at the clean clip's loudness
  (one gain, no limiter: the bound of any level stage); ``normalised``: plain loudness normalisation (-14 LUFS, -1 dBTP);
* ``echo``: the echo stage alone (:func:`automaster.mastering.policy.remove_echo`);
* ``chain``, ``mask``: the shipped model's inversion alone (no echo stage, no level gain, no limiter);
* ``level``: the level model's gain alone (the ``restore`` preset's gain, no limiter);
* ``ceiling``: the -1 dBTP true-peak limiter alone (no gain);
* ``level+ceiling``: the level gain into the limiter (the ``restore`` preset on the input);
* ``default``: :class:`automaster.mastering.Masterer` as ``automaster master`` runs it;
* ``default-noceiling``: the same with the ceiling at +30 dBTP (the limiter never acts; the
  0 dBFS trim, a plain gain, remains).

``--max-limiting-db`` sets the level gain's bound on the limiter's reduction for ``default`` (the
product's ``MasterConfig.max_limiting_db``; ``inf``: unbounded, as before issue 21); ``--bounds
0,1,inf`` adds a ``default@<bound>`` path for each (how the bound was chosen, on validation).
Measures against the clean clip, as the evaluate job measures them (:class:`automaster.evaluation.metrics.Reference`): SI-SDR gain over
the damaged input (dB), MR-STFT as a ratio to the input's, the loudness error (LU) and, for the paths
with a limiter, its largest gain reduction (means over the clips; MR-STFT: the ratio of the means).
Writes the rows and means to ``--out`` (JSON) and prints Markdown tables of the means;
``--tables FILE`` prints those of an earlier run's JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from automaster.config import DAMAGE_EFFECTS, AudioConfig, DegradeConfig, MasterConfig  # noqa: E402
from automaster.dsp.constants import MODEL_RATE  # noqa: E402

DAMAGES = ("ours", *DAMAGE_EFFECTS, "pedalboard")
PATHS = ("identity", "oracle-gain", "normalised", "echo", "chain", "mask", "level", "ceiling", "level+ceiling", "default", "default-noceiling")
PEAK_CEILING = 0.999  # as the evaluate job's EvalConfig.peak_ceiling
NO_CEILING_DBTP = 30.0


def common_arguments(p: argparse.ArgumentParser, damages: tuple[str, ...], paths: tuple[str, ...], out: str) -> None:
    """The options this benchmark shares with ``bench/foreign_damage.py`` (clips, models, paths, output)."""
    p.add_argument("--corpus", default=str(REPO.parent.parent / "shared" / "data" / "fma_mini"))
    p.add_argument("--music", default=str(REPO.parent.parent / "shared" / "data" / "music"))
    p.add_argument("--split", default="test", choices=["training", "validation", "test"])
    p.add_argument("--sets", default="fma,music", help="fma and/or music (the music folder: every excerpt)")
    p.add_argument("--clips", type=int, default=0, help="at most this many clips per set (0: all)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--damages", default=",".join(damages))
    p.add_argument("--paths", default=",".join(paths))
    p.add_argument("--model", default=str(REPO / "models" / "reference"))
    p.add_argument("--level-model", default=str(REPO / "models" / "level"))
    p.add_argument("--bounds", default="", help="comma-separated max_limiting_db values: adds a default@<bound> path each")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--tables", metavar="JSON", help="print the tables of an earlier run's output, nothing else")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / f"{out}-{time.strftime('%Y-%m-%d')}.json"))


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace, damages: tuple[str, ...]) -> argparse.Namespace:
    """``args`` of :func:`common_arguments` with the comma lists split and checked (a mistake exits 2)."""
    for name, choices in (("damages", damages), ("paths", PATHS), ("sets", ("fma", "music"))):
        chosen = [x.strip() for x in getattr(args, name).split(",") if x.strip()]
        if not chosen or set(chosen) - set(choices):
            p.error(f"--{name}: a comma-separated subset of {','.join(choices)}, got {getattr(args, name)!r}")
        setattr(args, name, chosen)
    args.bounds = [float(b) for b in args.bounds.split(",") if b.strip()]
    args.paths += [f"default@{b:g}" for b in args.bounds]
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_arguments(p, DAMAGES, PATHS, "attribution")
    p.add_argument("--max-limiting-db", type=float, default=None, help="the product's default when not given")
    return check_arguments(p, p.parse_args(argv), DAMAGES)


def list_clips(args: argparse.Namespace) -> list[dict[str, str]]:
    """``{set, track_id, path}`` of every clip to measure."""
    from automaster.audio import is_audio_file
    from automaster.pipelines.evaluate import list_clean

    clips = []
    if "fma" in args.sets:
        rows, _ = list_clean(args.corpus, args.split, args.clips)
        clips += [{"set": "fma", "track_id": r["track_id"], "path": r["path"]} for r in rows]
    if "music" in args.sets:
        names = sorted(n for n in os.listdir(args.music) if is_audio_file(n))  # the top level: 000/ copies d01
        names = names[: args.clips] if args.clips else names
        clips += [{"set": "music", "track_id": os.path.splitext(n)[0], "path": os.path.join(args.music, n)} for n in names]
    return clips


# ---------------------------------------------------------------------------- one worker

_STATE: dict[str, Any] = {}


def _init(args: argparse.Namespace) -> None:
    """Per process: one thread, the Masterers and the level model loaded once."""
    import torch

    from automaster.mastering import Masterer
    torch.set_num_threads(1)
    base = MasterConfig(level_model=args.level_model, chunk_s=max(30.0, args.seconds))
    alone = dict(echo_removal=False, level_model=None, preset="none")
    _STATE.update(
        args=args,
        default=Masterer(args.model, "chain", config=base),
        noceiling=Masterer(args.model, "chain", config=base, true_peak_dbtp=NO_CEILING_DBTP),
        chain=Masterer(args.model, "chain", config=base, **alone),
        mask=Masterer(args.model, "mask", config=base, **alone),
        audio_cfg=AudioConfig(),
    )
    _STATE["level_model"] = _STATE["default"].level_model  # the one the default loaded (trees or a checkpoint)
    # until masterer.py passes MasterConfig.max_limiting_db on to FinishSettings
    if args.max_limiting_db is not None:
        for name in ("default", "noceiling"):
            _bound(_STATE[name], args.max_limiting_db)
    for b in args.bounds:
        _STATE[f"default@{b:g}"] = _bound(Masterer(args.model, "chain", config=base), b)


def _bound(masterer: Any, bound_db: float) -> Any:
    """``masterer`` with its level gain's bound on limiting set (``inf``: none)."""
    bound = None if math.isinf(bound_db) else bound_db
    masterer.finish_settings = dataclasses.replace(masterer.finish_settings, max_limiting_db=bound)
    return masterer


def level_gain_db(audio: np.ndarray) -> float:
    """The level head's gain for ``audio`` ``(C, T)`` at the model rate (what the ``restore``
    preset applies when nothing changed the level before it: one chunk, its mono downmix)."""
    import torch

    from automaster.dsp.stft import N_FFT

    y = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=0, keepdims=True, dtype=np.float32)))
    short = N_FFT // 2 + 1 - y.shape[-1]
    y = torch.nn.functional.pad(y, (0, short)) if short > 0 else y
    with torch.inference_mode():
        return float(_STATE["level_model"](y[None], outputs=("level_db",))["level_db"].mean())


def damage(clean: np.ndarray, track_id: str, kind: str, seed: int) -> np.ndarray:
    """The damaged clip, as the evaluate job makes it (``kind``: ours, one effect, pedalboard)."""
    if kind == "pedalboard":
        from automaster.pedalboard_damage import pedalboard_degrade

        return pedalboard_degrade(clean, MODEL_RATE, seed, track_id, PEAK_CEILING).audio
    from automaster.degrade import degrade_clip

    effects = DAMAGE_EFFECTS if kind == "ours" else (kind,)
    result = degrade_clip(clean, MODEL_RATE, seed, track_id, DegradeConfig(peak_ceiling=PEAK_CEILING), effects=effects)
    return result.audio[0].numpy().astype(np.float32)


def render(path: str, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """One path's output for the damaged clip ``x`` and what it reports (gain, limiting)."""
    from automaster.evaluation.baselines import normalised
    from automaster.mastering.finishing import FinishSettings, finish
    from automaster.mastering.policy import MIN_ECHO_GAIN, remove_echo

    if path == "identity":
        return x, {}
    if path == "normalised":
        return normalised(x)[0], {}
    if path == "echo":
        y, note = remove_echo(x, MODEL_RATE, MIN_ECHO_GAIN)
        return y, {"echo_removed": note["echo_removed"]}
    if path in ("chain", "mask"):
        return _STATE[path].master_audio(x, MODEL_RATE)[0], {}
    if path == "level":
        gain = level_gain_db(x)
        return x * np.float32(10.0 ** (gain / 20.0)), {"loudness_gain_db": gain}
    if path in ("ceiling", "level+ceiling"):
        settings = FinishSettings(preset="none", true_peak_dbtp=-1.0) if path == "ceiling" else _STATE["default"].finish_settings
        gain = level_gain_db(x) if path == "level+ceiling" else None
        y, report = finish(x, x, MODEL_RATE, settings, level_gain_db=gain)
        return y, {k: report[k] for k in ("loudness_gain_db", "limiter_max_reduction_db", "limiter_mean_reduction_db")}
    masterer = _STATE["noceiling" if path == "default-noceiling" else path]
    y, info = masterer.master_audio(x, MODEL_RATE)
    keep = ("loudness_gain_db", "limiter_max_reduction_db", "limiter_mean_reduction_db", "headroom_gain_db", "echo_removed")
    return y, {k: info[k] for k in keep}


def load_clean(clip: dict[str, str], seconds: float) -> tuple[np.ndarray, Any]:
    """The clean excerpt ``(2, T)`` of ``clip`` as the evaluate job reads it (stereo, the peak at
    most ``PEAK_CEILING``) and its :class:`automaster.evaluation.metrics.Reference`."""
    from automaster.audio import read_excerpt
    from automaster.dsp.loudness import integrated_loudness
    from automaster.evaluation.metrics import Reference

    clean, _ = read_excerpt(clip["path"], seconds, sample_rate=MODEL_RATE, mono=False, min_seconds=seconds)
    if clean.shape[0] == 1:
        clean = np.repeat(clean, 2, axis=0)
    peak = float(np.abs(clean).max())
    if peak > PEAK_CEILING:  # as the evaluate job: scale the reference down rather than clip it
        clean = (clean * np.float32(PEAK_CEILING / peak)).astype(np.float32)
    return clean, Reference(clean, _STATE["audio_cfg"], integrated_loudness(clean, MODEL_RATE))


def measure_paths(reference: Any, x: np.ndarray, paths: list[str], **fields: Any) -> list[dict[str, Any]]:
    """One row per path: the damaged clip ``x`` rendered by it, measured against ``reference``
    (with ``fields`` and the path's CPU seconds in each row). Needs :func:`_init` in this process."""
    rows = []
    for path in paths:
        t = time.process_time()
        if path == "oracle-gain":  # the damaged clip at the clean clip's loudness: what a perfect level stage does
            from automaster.dsp.loudness import integrated_loudness

            gain = reference.lufs - integrated_loudness(x, MODEL_RATE)
            y, info = x * np.float32(10.0 ** (gain / 20.0)), {"loudness_gain_db": gain}
        else:
            y, info = render(path, x)
        seconds = time.process_time() - t
        m = reference.measure(np.asarray(y, dtype=np.float32), aligned=True)
        rows.append({**fields, "path": path, "cpu_s": seconds, **m, **info})
    return rows


def measure_clip(clip: dict[str, str]) -> list[dict[str, Any]]:
    """Every damage and path of one clip: one row each."""
    args = _STATE["args"]
    rows = []
    try:
        clean, reference = load_clean(clip, args.seconds)
        for kind in args.damages:
            x = damage(clean, clip["track_id"], kind, args.seed)
            rows += measure_paths(reference, x, args.paths, **clip, damage=kind)
    except ValueError as exc:  # an excerpt that cannot be measured (silent, or its damage not finite): left out, said
        print(f"{clip['set']}/{clip['track_id']} skipped: {exc}", file=sys.stderr, flush=True)
        return [{**clip, "skipped": str(exc)}]
    print(f"{clip['set']}/{clip['track_id']} done", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------- the table


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{damage: {path: means}}``: SI-SDR gain over the same clip's identity, MR-STFT as the ratio
    of the means (path's over identity's: a mean of per-clip ratios is ruled by the clips whose
    damage is nearly inaudible), loudness error, the limiter's largest reduction and the level gain."""
    ident = {(r["track_id"], r["damage"]): r for r in rows if r["path"] == "identity"}
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in rows:
        base = ident[(r["track_id"], r["damage"])]
        values = {
            "d_si_sdr_db": r["si_sdr_db"] - base["si_sdr_db"], "mrstft": r["mrstft"], "mrstft_identity": base["mrstft"],
            "loudness_err_lu": r["loudness_err_lu"], "limiter_max_db": r.get("limiter_max_reduction_db"),
            "gain_db": r.get("loudness_gain_db"), "cpu_s": r["cpu_s"],
        }
        entry = out.setdefault(r["damage"], {}).setdefault(r["path"], {})
        for k, v in values.items():
            if v is not None and math.isfinite(v):
                entry.setdefault(k, []).append(float(v))
    means = {d: {p: {k: float(np.mean(v)) for k, v in m.items()} | {"n": len(m["cpu_s"])} for p, m in ps.items()}
             for d, ps in out.items()}
    for by_path in means.values():
        for m in by_path.values():
            m["mrstft_ratio"] = m.pop("mrstft") / m.pop("mrstft_identity")
    return means


def table(means: dict[str, dict[str, dict[str, float]]], paths: list[str]) -> str:
    """Damages as rows, paths as columns: ``ΔSI-SDR / MR-STFT ratio`` per cell."""
    lines = ["| damage | " + " | ".join(paths) + " |", "|---|" + "---|" * len(paths)]
    for damage_kind, by_path in means.items():
        cells = [f"{by_path[p]['d_si_sdr_db']:+.2f} / {by_path[p]['mrstft_ratio']:.2f}" if p in by_path else "–" for p in paths]
        lines.append(f"| {damage_kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def level_table(means: dict[str, dict[str, dict[str, float]]], paths: list[str]) -> str:
    """Loudness error (LU), and gain / largest limiter reduction (dB) where a path has them."""
    keep = [p for p in paths if p not in ("echo", "chain", "mask")]
    lines = ["| damage | " + " | ".join(keep) + " |", "|---|" + "---|" * len(keep)]
    for damage_kind, by_path in means.items():
        cells = []
        for p in keep:
            m = by_path.get(p, {})
            cell = f"{m['loudness_err_lu']:.2f}" if "loudness_err_lu" in m else "–"
            if "gain_db" in m or "limiter_max_db" in m:
                cell += f" ({m.get('gain_db', 0.0):+.1f}; {m.get('limiter_max_db', 0.0):.1f})"
            cells.append(cell)
        lines.append(f"| {damage_kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.tables:
        rows = json.loads(Path(args.tables).read_text())["rows"]
        paths = list(dict.fromkeys(r["path"] for r in rows))
        return print_tables(summarise(rows), paths)
    clips = list_clips(args)
    start, cpu = time.time(), time.process_time()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=_init, initargs=(args,)) as pool:
            rows = [r for clip_rows in pool.map(measure_clip, clips) for r in clip_rows]
    else:
        _init(args)
        rows = [r for clip in clips for r in measure_clip(clip)]
    skipped = [r for r in rows if "skipped" in r]
    rows = [r for r in rows if "skipped" not in r]
    means = summarise(rows)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    run = {"wall_s": time.time() - start, "cpu_s_paths": sum(r["cpu_s"] for r in rows), "load": os.getloadavg(),
           "clips": len(clips) - len(skipped), "skipped": skipped, "driver_cpu_s": time.process_time() - cpu}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": settings, "run": run, "means": means, "rows": rows}, indent=1, default=float))
    print(f"{run['clips']} clips ({len(skipped)} skipped), {run['wall_s']:.0f} s wall, {run['cpu_s_paths']:.0f} CPU s in the paths, load {run['load']}")
    print_tables(means, args.paths)


def print_tables(means: dict[str, dict[str, dict[str, float]]], paths: list[str]) -> None:
    print("ΔSI-SDR (dB) / MR-STFT ratio to the input's:\n" + table(means, paths))
    print("\nloudness error LU (level gain dB; largest limiter reduction dB):\n" + level_table(means, paths))


if __name__ == "__main__":
    main()
