"""Damage made by other implementations (ffmpeg filters, pedalboard effects), and what the product does to it.

    flock /tmp/heavy.lock python bench/foreign_damage.py --split test [--sets fma,music] [--jobs 2]

The same clean clips as ``bench/attribution.py`` (centred ``--seconds`` excerpts of an FMA split and,
with ``--sets ...,music``, every excerpt of the music folder; stereo, 44.1 kHz, the peak at most 0.999),
each damaged by one foreign effect at a time. Parameters are drawn uniformly (``log``: log-uniformly)
from the ranges below with a numpy generator seeded by ``(--seed, track id, damage)``:

===================  ===========================================================================
``ff-echo``          ffmpeg ``aecho=0.8:0.9:D:G`` (the manual's gains), D log 40-1000 ms, G 0.2-0.5
``ff-echo-multi``    ffmpeg ``aecho``, 2-3 taps, each D log 50-800 ms, G 0.15-0.45
``ff-compressor``    ffmpeg ``acompressor`` threshold -30..-10 dB, ratio 2-10, attack 5-50 ms,
                     release 50-500 ms, makeup 0-6 dB (RMS detection, knee 2.83: its defaults)
``ff-equalizer``     ffmpeg ``equalizer`` one peak, f log 60-10000 Hz, Q 0.5-2, gain -8..+8 dB
``ff-bass-treble``   ffmpeg ``bass`` (100 Hz) and ``treble`` (3 kHz) shelves, each -6..+6 dB
``ff-echo-limiter``  ``ff-echo``'s draw, then ``alimiter`` limit -6..-1 dBFS (auto level on, its
                     default; ``latency=1``: without it the output lags by the 5 ms lookahead)
``ff-loudnorm``      ffmpeg ``loudnorm`` single pass (dynamic), I -18..-10 LUFS, TP -1, LRA 7
                     (resampled back from its 192 kHz output)
``pb-delay``         pedalboard ``Delay`` with feedback: delay log 0.05-0.5 s, feedback 0.2-0.6,
                     mix 0.2-0.5
``pb-reverb-s|m|l``  pedalboard ``Reverb`` room size 0.2 / 0.5 / 0.8, wet 0.15-0.35, dry 0.5
``pb-compressor``    pedalboard ``Compressor`` threshold -30..-10 dB, ratio 2-10, attack 1-30 ms,
                     release 50-300 ms
``pb-limiter``       pedalboard ``Limiter`` threshold -12..-3 dB, release 50-300 ms
``pb-gain``          pedalboard ``Gain`` -12..-3 dB (a pure level drop)
===================  ===========================================================================

A damaged clip whose peak exceeds 0.999 is turned down to 0.999 (a static gain, as our degrader's
headroom gain: a file would clip). Paths are ``bench/attribution.py``'s (same code): ``identity``,
``normalised`` (-14 LUFS, -1 dBTP), ``echo`` (the echo stage alone), ``level+ceiling`` (the restore
preset's gain and limiter) and ``default`` (``automaster master``). Reports per damage: SI-SDR gain over
the input (dB), MR-STFT as the ratio of the means to the input's, the share of clips where the echo
stage fired in ``default``, and the level gain it applied; cells that harm (below -0.3 dB or above
1.05x) are in bold. ``--bounds 0,0.5`` adds ``default@<bound>`` paths: the default with the level
gain's bound on limiting set to each (attribution.py's option). Writes rows and means to ``--out`` (JSON); ``--tables FILE`` reprints them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import attribution  # noqa: E402  (its clip listing, clean excerpts, paths and summary)

from automaster.degrade import seed_for  # noqa: E402
from automaster.dsp.constants import MODEL_RATE  # noqa: E402

PATHS = ("identity", "normalised", "echo", "level+ceiling", "default")
HARM_SI_SDR_DB = -0.3  # issue 21's "no harm" bounds
HARM_MRSTFT = 1.05
# SI-SDR is read up to this: a pure gain's identity measures ~144 dB (float32 rounding), and any
# processing at all drops it by tens of dB that nobody could hear.
SI_SDR_CAP_DB = 60.0


# ---------------------------------------------------------------------------- the damages


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _log(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def ffmpeg(x: np.ndarray, graph: str) -> np.ndarray:
    """``x`` ``(2, T)`` float32 through the ffmpeg filter graph ``graph``, cut or padded to ``T``."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "f32le", "-ar", str(MODEL_RATE), "-ac", "2",
           "-i", "pipe:0", "-af", graph, "-f", "f32le", "-ar", str(MODEL_RATE), "-ac", "2", "pipe:1"]
    out = subprocess.run(cmd, input=np.ascontiguousarray(x.T, dtype="<f4").tobytes(), capture_output=True, check=True).stdout
    y = np.frombuffer(out, dtype="<f4").reshape(-1, 2).T
    n = x.shape[-1]
    return np.pad(y[:, :n], ((0, 0), (0, max(0, n - y.shape[-1])))).astype(np.float32)


def pedalboard(x: np.ndarray, *plugins: Any) -> np.ndarray:
    """``x`` ``(2, T)`` through a pedalboard chain of ``plugins``."""
    from pedalboard import Pedalboard

    return Pedalboard(list(plugins))(x, MODEL_RATE).astype(np.float32)


def _echo_draw(rng: np.random.Generator) -> dict[str, float]:
    return {"delay_ms": _log(rng, 40, 1000), "decay": _u(rng, 0.2, 0.5)}


def _aecho(p: dict[str, Any]) -> str:
    delays, decays = p.get("delays_ms", [p.get("delay_ms")]), p.get("decays", [p.get("decay")])
    return f"aecho=0.8:0.9:{'|'.join(f'{d:.1f}' for d in delays)}:{'|'.join(f'{g:.3f}' for g in decays)}"


def _multi_draw(rng: np.random.Generator) -> dict[str, Any]:
    n = int(rng.integers(2, 4))
    return {"delays_ms": sorted(_log(rng, 50, 800) for _ in range(n)), "decays": [_u(rng, 0.15, 0.45) for _ in range(n)]}


def _reverb(room: float) -> tuple[Callable, Callable]:
    def draw(rng: np.random.Generator) -> dict[str, float]:
        return {"room_size": room, "wet_level": _u(rng, 0.15, 0.35), "dry_level": 0.5}

    def apply(x: np.ndarray, p: dict[str, float]) -> np.ndarray:
        from pedalboard import Reverb

        return pedalboard(x, Reverb(**p))

    return draw, apply


def _pb(name: str) -> Callable:
    def apply(x: np.ndarray, p: dict[str, float]) -> np.ndarray:
        import pedalboard as pb

        return pedalboard(x, getattr(pb, name)(**p))

    return apply


# name -> (draw parameters from the generator, apply them to the clean clip)
DAMAGES: dict[str, tuple[Callable[[np.random.Generator], dict[str, Any]], Callable[[np.ndarray, dict[str, Any]], np.ndarray]]] = {
    "ff-echo": (_echo_draw, lambda x, p: ffmpeg(x, _aecho(p))),
    "ff-echo-multi": (_multi_draw, lambda x, p: ffmpeg(x, _aecho(p))),
    "ff-compressor": (
        lambda r: {"threshold_db": _u(r, -30, -10), "ratio": _u(r, 2, 10), "attack": _u(r, 5, 50),
                   "release": _u(r, 50, 500), "makeup_db": _u(r, 0, 6)},
        lambda x, p: ffmpeg(x, f"acompressor=threshold={10 ** (p['threshold_db'] / 20):.5f}:ratio={p['ratio']:.3f}:"
                               f"attack={p['attack']:.2f}:release={p['release']:.2f}:makeup={10 ** (p['makeup_db'] / 20):.4f}")),
    "ff-equalizer": (
        lambda r: {"f": _log(r, 60, 10000), "q": _u(r, 0.5, 2), "g": _u(r, -8, 8)},
        lambda x, p: ffmpeg(x, f"equalizer=f={p['f']:.1f}:t=q:w={p['q']:.3f}:g={p['g']:.2f}")),
    "ff-bass-treble": (
        lambda r: {"bass_db": _u(r, -6, 6), "treble_db": _u(r, -6, 6)},
        lambda x, p: ffmpeg(x, f"bass=g={p['bass_db']:.2f},treble=g={p['treble_db']:.2f}")),
    "ff-echo-limiter": (
        lambda r: _echo_draw(r) | {"limit_db": _u(r, -6, -1)},
        lambda x, p: ffmpeg(x, _aecho(p) + f",alimiter=limit={10 ** (p['limit_db'] / 20):.4f}:latency=1")),
    "ff-loudnorm": (
        lambda r: {"I": _u(r, -18, -10)},
        lambda x, p: ffmpeg(x, f"loudnorm=I={p['I']:.2f}:TP=-1:LRA=7,aresample={MODEL_RATE}")),
    "pb-delay": (
        lambda r: {"delay_seconds": _log(r, 0.05, 0.5), "feedback": _u(r, 0.2, 0.6), "mix": _u(r, 0.2, 0.5)},
        _pb("Delay")),
    "pb-reverb-s": _reverb(0.2),
    "pb-reverb-m": _reverb(0.5),
    "pb-reverb-l": _reverb(0.8),
    "pb-compressor": (
        lambda r: {"threshold_db": _u(r, -30, -10), "ratio": _u(r, 2, 10), "attack_ms": _u(r, 1, 30), "release_ms": _u(r, 50, 300)},
        _pb("Compressor")),
    "pb-limiter": (lambda r: {"threshold_db": _u(r, -12, -3), "release_ms": _u(r, 50, 300)}, _pb("Limiter")),
    "pb-gain": (lambda r: {"gain_db": _u(r, -12, -3)}, _pb("Gain")),
}


def foreign_damage(clean: np.ndarray, track_id: str, kind: str, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``(damaged clip, its parameters)``: ``clean`` ``(2, T)`` through the foreign damage ``kind``,
    turned down to a peak of 0.999 when it exceeds it (the same seed, track and kind give the same draw)."""
    draw, apply = DAMAGES[kind]
    params = draw(np.random.default_rng(seed_for(seed, f"{track_id}/{kind}")))
    y = apply(np.ascontiguousarray(clean, dtype=np.float32), params)
    peak = float(np.abs(y).max())
    if peak > attribution.PEAK_CEILING:
        y = y * np.float32(attribution.PEAK_CEILING / peak)
    return y.astype(np.float32), params


# ---------------------------------------------------------------------------- the run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    attribution.common_arguments(p, tuple(DAMAGES), PATHS, "foreign")
    args = attribution.check_arguments(p, p.parse_args(argv), tuple(DAMAGES))
    if "identity" not in args.paths:
        p.error("--paths: identity is needed (every figure is relative to it)")
    args.max_limiting_db = None  # attribution's Masterers as the product ships them
    return args


def measure_clip(clip: dict[str, str]) -> list[dict[str, Any]]:
    """Every foreign damage and path of one clip: one row each (with the damage's parameters)."""
    args = attribution._STATE["args"]
    clean, reference = attribution.load_clean(clip, args.seconds)
    rows = []
    for kind in args.damages:
        x, params = foreign_damage(clean, clip["track_id"], kind, args.seed)
        rows += attribution.measure_paths(reference, x, args.paths, **clip, damage=kind, params=params)
    print(f"{clip['set']}/{clip['track_id']} done", file=sys.stderr, flush=True)
    return rows


def echo_fired(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per damage, the share of clips where the default path's echo stage undid an echo."""
    out: dict[str, list[bool]] = {}
    for r in rows:
        if r["path"] == "default":
            out.setdefault(r["damage"], []).append(bool(r.get("echo_removed")))
    return {d: float(np.mean(v)) for d, v in out.items()}


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """:func:`attribution.summarise` with SI-SDR read up to ``SI_SDR_CAP_DB``."""
    return attribution.summarise([r | {"si_sdr_db": min(r["si_sdr_db"], SI_SDR_CAP_DB)} for r in rows])


def table(means: dict[str, dict[str, dict[str, float]]], fired: dict[str, float], paths: list[str]) -> str:
    """Damages as rows, paths as columns (``ΔSI-SDR / MR-STFT ratio``, harm in bold), then the
    echo stage's firing share and the default's level gain and largest limiter reduction."""
    keep = [p for p in paths if p != "identity"]
    lines = ["| damage | " + " | ".join(keep) + " | echo fired | gain dB (limiter dB) | LU error: input → default |",
             "|---|" + "---|" * (len(keep) + 3)]
    for kind, by_path in means.items():
        cells = []
        for p in keep:
            m = by_path.get(p)
            if m is None:
                cells.append("–")
                continue
            s, r = f"{m['d_si_sdr_db']:+.2f}".replace("-", "−"), f"{m['mrstft_ratio']:.2f}"
            cells.append(f"{'**' + s + '**' if m['d_si_sdr_db'] < HARM_SI_SDR_DB else s} / {'**' + r + '**' if m['mrstft_ratio'] > HARM_MRSTFT else r}")
        d = by_path.get("default", {})
        level = f"{d['gain_db']:+.1f} ({d.get('limiter_max_db', 0.0):.1f})" if "gain_db" in d else "–"
        share = f"{fired[kind]:.0%}" if kind in fired else "–"
        lu = f"{by_path['identity']['loudness_err_lu']:.2f} → {d['loudness_err_lu']:.2f}" if "loudness_err_lu" in d else "–"
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {share} | {level} | {lu} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.tables:
        saved = json.loads(Path(args.tables).read_text())
        paths = list(dict.fromkeys(r["path"] for r in saved["rows"]))
        return print(table(summarise(saved["rows"]), echo_fired(saved["rows"]), paths))
    clips = attribution.list_clips(args)
    start = time.time()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=attribution._init, initargs=(args,)) as pool:
            rows = [r for clip_rows in pool.map(measure_clip, clips) for r in clip_rows]
    else:
        attribution._init(args)
        rows = [r for clip in clips for r in measure_clip(clip)]
    means, fired = summarise(rows), echo_fired(rows)
    run = {"wall_s": time.time() - start, "cpu_s_paths": sum(r["cpu_s"] for r in rows), "load": os.getloadavg(), "clips": len(clips)}
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": settings, "run": run, "means": means, "echo_fired": fired, "rows": rows},
                                         indent=1, default=float))
    print(f"{len(clips)} clips, {run['wall_s']:.0f} s wall, {run['cpu_s_paths']:.0f} CPU s in the paths, load {run['load']}")
    print("ΔSI-SDR (dB) / MR-STFT ratio to the input's (harm in bold):\n" + table(means, fired, args.paths))


if __name__ == "__main__":
    main()
