"""automaster next to its peers (issue 13) on damaged/clean pairs of real music.

    flock /tmp/bench.lock python bench/peers.py --corpus ../shared/data/fma_mini --split test --clip-s 30

Pairs: every clip of the split (centred ``--clip-s`` seconds, 44.1 kHz, its channels), damaged by
our chain and by pedalboard's (the evaluate job's damage: seed 1, the same code). Each clip's
reference is the first other clean clip of its genre in the split (the next clip when none).

Systems (all on one thread):

* ``identity``: the damaged clip as it is;
* ``automaster <inversion> <preset>``: the restoration, then the finishing stages with the preset
  (every preset for the chain, ``restore`` for the others), and ``reference`` (the chain with
  ``--reference``: tone, width and loudness of the reference, -1 dBTP);
* ``matchering``: Matchering 2 with the reference (its defaults, 24-bit output);
* ``de-limiter``: music-de-limiter's pretrained model (a stand-in ``torchaudio`` module for its
  unused training import: torchaudio's wheels do not load with CPU torch);
* ``normalise+limit``: pyloudnorm to -14 LUFS, then automaster's true-peak limiter at -1 dBTP.

Measures against the clean clip: ΔSI-SDR (dB over the damaged clip's), MR-STFT, mel L1 (dB), the
LUFS error to the system's own target (the clean clip's level for restoration, the preset's
target, the reference's loudness), true peak (dBTP, 4x), tone error to the reference (dB,
:func:`automaster.dsp.tone.tone_error_db`), seconds of processing per minute of audio, and each
system's start-up (a fresh interpreter importing it and loading its model).

``--reference-only`` runs only what takes a reference (``automaster chain reference`` and
Matchering, next to the damaged clip) and adds the reference table: stereo width moved toward the
reference's (input: the damaged clip) and past it, on the clips whose width differs from the
reference's by more than 1 dB, and how many clips' EQ reached its bound (``--max-eq-db``).

The peers are the ``bench`` extra (``pip install -e .[bench]``); automaster never imports them.
Writes ``bench/results/peers-<date>.json`` and prints the Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread, before numpy/torch/numba load

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from automaster.audio import read_excerpt  # noqa: E402
from automaster.config import EvalConfig, MasterConfig  # noqa: E402
from automaster.dsp.constants import MODEL_RATE  # noqa: E402
from automaster.dsp.limiter import true_peak_limit  # noqa: E402
from automaster.dsp.loudness import integrated_loudness, true_peak_dbtp  # noqa: E402
from automaster.dsp.metrics import si_sdr  # noqa: E402
from automaster.dsp.tone import stereo_width_db, tone_error_db, tone_profile  # noqa: E402
from automaster.evaluation.metrics import Reference  # noqa: E402
from automaster.mastering.finishing import FinishSettings, finish  # noqa: E402
from automaster.mastering.presets import PRESETS  # noqa: E402
from automaster.pipelines.evaluate import ALIGNED, Evaluator  # noqa: E402

log = logging.getLogger("peers")
SR = MODEL_RATE
DEGRADERS = ("ours", "pedalboard")
MEASURES = ("d_si_sdr_db", "mrstft", "mel_l1_db", "lufs_err_lu", "true_peak_dbtp", "tone_err_db", "s_per_min")
# A fresh interpreter imports each system and loads its model: its start-up.
STARTUP = {
    "automaster": "from automaster.mastering import Masterer; Masterer('{model}', inversion='chain')",
    "matchering": "import matchering",
    "de-limiter": ("import sys, types; m = types.ModuleType('torchaudio'); m.transforms = types.ModuleType('t'); "
                   "sys.modules['torchaudio'] = m; from music_de_limiter import load_pretrained_model; load_pretrained_model('cpu')"),
    "normalise+limit": "import pyloudnorm; from automaster.dsp.limiter import true_peak_limit",
}


def _stub_torchaudio() -> None:
    """music-de-limiter imports asteroid, whose STOI loss imports torchaudio (training only)."""
    if "torchaudio" not in sys.modules:
        stub = types.ModuleType("torchaudio")
        stub.transforms = types.ModuleType("torchaudio.transforms")
        sys.modules["torchaudio"] = stub
        sys.modules["torchaudio.transforms"] = stub.transforms


class Peers:
    """The peer systems, loaded once: each maps ``(damaged (C, T), reference path)`` to audio."""

    def __init__(self, tmp: Path, reference_only: bool = False) -> None:
        import matchering

        self.tmp, self.mg = tmp, matchering
        matchering.log(lambda *_: None)
        if reference_only:
            return
        import pyloudnorm

        _stub_torchaudio()
        from music_de_limiter import load_pretrained_model

        self.pyln = pyloudnorm
        self.delimiter, rate = load_pretrained_model("cpu")
        assert rate == SR, rate
        self.delimiter.eval()

    def matchering(self, damaged: np.ndarray, reference_path: Path) -> np.ndarray:
        import soundfile as sf

        target, result = self.tmp / "target.wav", self.tmp / "matchering.wav"
        sf.write(target, damaged.T, SR, subtype="FLOAT")
        self.mg.process(target=str(target), reference=str(reference_path), results=[self.mg.pcm24(str(result))])
        out, _ = sf.read(result, dtype="float32", always_2d=True)
        return _channels_like(out.T, damaged)

    def de_limiter(self, damaged: np.ndarray, reference_path: Path) -> np.ndarray:
        x = torch.from_numpy(np.array(np.broadcast_to(damaged, (2, damaged.shape[-1]))))[None]
        with torch.no_grad():
            _, out, *_ = self.delimiter(x)
        return _channels_like(out[0].numpy(), damaged)

    def normalise_limit(self, damaged: np.ndarray, reference_path: Path) -> np.ndarray:
        meter = self.pyln.Meter(SR)
        data = damaged.T.astype(np.float64)
        gained = self.pyln.normalize.loudness(data, meter.integrated_loudness(data), -14.0)
        return true_peak_limit(gained.T.astype(np.float32), SR, -1.0)


def _channels_like(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    out = out[:, : like.shape[-1]]
    if out.shape[-1] < like.shape[-1]:
        out = np.pad(out, ((0, 0), (0, like.shape[-1] - out.shape[-1])))
    if like.shape[0] == 1 and out.shape[0] != 1:
        out = out.mean(axis=0, keepdims=True)
    return np.ascontiguousarray(out, dtype=np.float32)


def pick_references(tracks: list[Any]) -> dict[str, Any]:
    """Each track's reference: the first other track of its genre in the list, else the next track."""
    refs = {}
    for i, t in enumerate(tracks):
        same = [u for u in tracks if u.genre == t.genre and u.track_id != t.track_id]
        refs[t.track_id] = same[0] if same else tracks[(i + 1) % len(tracks)]
    return refs


def _timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _eq_at_bound(tone: dict[str, Any] | None) -> bool | None:
    """Whether the reference EQ reached its bound (older reports: +-12 dB, the side's boost +6)."""
    if not tone or not tone.get("applied"):
        return None
    if "at_bound" in tone:
        return bool(tone["at_bound"]["mid"] or tone["at_bound"]["side"])
    return max(map(abs, tone["mid_eq_db"])) >= 11.99 or tone["side_eq_db"][1] >= 5.99 or tone["side_eq_db"][0] <= -11.99


def run_clip(ev: Evaluator, peers: Peers, track: Any, ref: Any, tmp: Path, reference_only: bool = False,
             max_eq_db: float | None = None) -> list[dict[str, Any]]:
    """Every system on one clip: rows of (system, measures)."""
    import soundfile as sf

    row = {"track_id": track.track_id, "path": track.path, "rel_path": track.path}
    clean, damaged, _, _ = ev._inputs(row)
    ref_audio, _ = read_excerpt(ref.path, ev.cfg.clip_seconds, sample_rate=SR, mono=False, min_seconds=ev.cfg.min_seconds)
    ref_path = tmp / "reference.wav"
    sf.write(ref_path, ref_audio.T, SR, subtype="FLOAT")
    ref_profile = tone_profile(ref_audio, SR)
    clean_lufs = integrated_loudness(clean, SR)
    reference = Reference(clean, ev.audio_cfg, clean_lufs)
    base_sdr = si_sdr(damaged, clean)
    minutes = damaged.shape[-1] / SR / 60.0

    outputs: dict[str, tuple[np.ndarray, float, float, bool]] = {"identity": (damaged, 0.0, clean_lufs, True)}
    at_bound = None
    eq_bound = {} if max_eq_db is None else {"max_eq_db": max_eq_db}
    for inversion in ("chain",) if reference_only else ev.cfg.inversions:
        restored, t_restore = _timed(lambda i=inversion: ev.masterer.master_audio(damaged, SR, inversion=i)[0])
        presets = [] if reference_only else list(PRESETS) if inversion == "chain" else ["restore"]
        for preset in presets:
            (out, _), t = _timed(lambda p=preset: finish(damaged, restored, SR, FinishSettings(preset=p)))
            target = PRESETS[preset].target_lufs
            outputs[f"automaster {inversion} {preset}"] = (out, t_restore + t, clean_lufs if target is None else target, inversion in ALIGNED)
        if inversion == "chain":
            (out, report), t = _timed(lambda: finish(damaged, restored, SR, FinishSettings(reference=ref_profile, **eq_bound)))
            outputs["automaster chain reference"] = (out, t_restore + t, ref_profile.lufs, True)
            at_bound = _eq_at_bound(report["tone"])
    others = [("matchering", peers.matchering, ref_profile.lufs)]
    if not reference_only:
        others += [("de-limiter", peers.de_limiter, clean_lufs), ("normalise+limit", peers.normalise_limit, -14.0)]
    for name, fn, target in others:
        out, t = _timed(lambda f=fn: f(damaged, ref_path))
        outputs[name] = (out, t, target, True)

    rows = []
    for system, (out, seconds, target, aligned) in outputs.items():
        m = reference.measure(out, aligned)
        lufs = integrated_loudness(out, SR)
        rows.append({
            "track_id": track.track_id, "genre": track.genre, "reference": ref.track_id, "system": system,
            "d_si_sdr_db": None if m["si_sdr_db"] is None else m["si_sdr_db"] - base_sdr,
            "mrstft": m["mrstft"], "mel_l1_db": m["mel_l1_db"], "lufs_err_lu": abs(lufs - target),
            "true_peak_dbtp": true_peak_dbtp(out, SR), "tone_err_db": tone_error_db(tone_profile(out, SR), ref_profile),
            "s_per_min": seconds / minutes, "width_in_db": stereo_width_db(damaged), "width_out_db": stereo_width_db(out),
            "width_ref_db": ref_profile.width_db, "eq_at_bound": at_bound if system == "automaster chain reference" else None,
        })
    return rows


def startup_seconds(model: str) -> dict[str, float]:
    """Wall seconds for a fresh interpreter to import each system and load its model."""
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    out = {}
    for name, code in STARTUP.items():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code.format(model=model)], check=True, env=env, capture_output=True)
        out[name] = time.perf_counter() - t
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{degrader: {system: {measure: mean (true peak: max)}}}``."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for r in rows:
        table.setdefault(r["degrader"], {}).setdefault(r["system"], {m: [] for m in MEASURES})
        for m in MEASURES:
            if r[m] is not None and np.isfinite(r[m]):
                table[r["degrader"]][r["system"]][m].append(r[m])
    for systems in table.values():
        for name, values in systems.items():
            systems[name] = {m: (None if not v else float(np.max(v) if m == "true_peak_dbtp" else np.mean(v))) for m, v in values.items()}
    return table


def reference_markdown(rows: list[dict[str, Any]]) -> str:
    """The reference table: tone, loudness, true peak, width moved toward / past the reference's
    (clips whose width differs from it by more than 1 dB) and clips whose EQ reached its bound."""
    lines = ["| damage | system | tone error (dB) | LUFS error (LU) | max true peak (dBTP) | width toward ref | width past ref "
             "| mean width distance to ref (dB) | EQ at its bound |", "|" + "---|" * 9]
    for degrader in dict.fromkeys(r["degrader"] for r in rows):
        for system in ("identity", "automaster chain reference", "matchering"):
            rs = [r for r in rows if r["degrader"] == degrader and r["system"] == system]
            apart = [r for r in rs if abs(r["width_in_db"] - r["width_ref_db"]) > 1.0]
            toward = sum(abs(r["width_out_db"] - r["width_ref_db"]) < abs(r["width_in_db"] - r["width_ref_db"]) for r in apart)
            past = sum((r["width_out_db"] - r["width_ref_db"]) * (r["width_in_db"] - r["width_ref_db"]) < 0 for r in apart)
            gap = np.mean([abs(r["width_out_db"] - r["width_ref_db"]) for r in rs])
            bound = [r["eq_at_bound"] for r in rs if r["eq_at_bound"] is not None]
            lines.append(f"| {degrader} | {system} | {np.mean([r['tone_err_db'] for r in rs]):.2f} | "
                         f"{np.mean([r['lufs_err_lu'] for r in rs]):.2f} | {max(r['true_peak_dbtp'] for r in rs):+.2f} | "
                         f"{toward} of {len(apart)} | {past} of {len(apart)} | {gap:.2f} | "
                         f"{f'{sum(bound)} of {len(bound)}' if bound else '-'} |")
    return "\n".join(lines)


def markdown(table: dict[str, Any], startup: dict[str, float]) -> str:
    head = ("| damage | system | ΔSI-SDR (dB) | MR-STFT | mel L1 (dB) | LUFS error (LU) | max true peak (dBTP) "
            "| tone error (dB) | s per min of audio |")
    lines = [head, "|" + "---|" * 9]
    fmt = {"d_si_sdr_db": "{:+.2f}", "mrstft": "{:.3f}", "mel_l1_db": "{:.2f}", "lufs_err_lu": "{:.2f}",
           "true_peak_dbtp": "{:+.2f}", "tone_err_db": "{:.2f}", "s_per_min": "{:.2f}"}
    for degrader, systems in table.items():
        for system, m in systems.items():
            cells = ["-" if m[k] is None else fmt[k].format(m[k]) for k in MEASURES]
            lines.append(f"| {degrader} | {system} | " + " | ".join(cells) + " |")
    lines += ["", "| system | start-up (s) |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in startup.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="an FMA root (e.g. fma_mini)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--clip-s", type=float, default=30.0)
    parser.add_argument("--limit", type=int, default=0, help="clips per degrader (0: all)")
    parser.add_argument("--model", default=str(HERE / "models" / "reference"))
    parser.add_argument("--inversions", default="chain,mask,griffinlim")
    parser.add_argument("--degraders", default=",".join(DEGRADERS))
    parser.add_argument("--reference-only", action="store_true", help="only the systems that take a reference, and their table")
    parser.add_argument("--max-eq-db", type=float, help="the reference EQ's bound (default: automaster's)")
    parser.add_argument("--out", default=str(HERE / "bench" / "results" / f"peers-{time.strftime('%Y-%m-%d')}.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    from automaster.corpus import scan_corpus

    tracks = [t for t in scan_corpus(args.corpus).tracks if t.split == args.split]
    tracks = tracks[: args.limit] if args.limit else tracks
    refs = pick_references(tracks)
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        peers = Peers(tmp, args.reference_only)
        for degrader in args.degraders.split(","):
            evaluation = EvalConfig(seed=1, degrader=degrader, clip_seconds=args.clip_s, inversions=tuple(args.inversions.split(",")))
            # The restoration alone (preset none): the bench applies each preset to the same restored audio.
            ev = Evaluator(args.model, evaluation, MasterConfig(preset="none", seed=1, chunk_s=max(30.0, args.clip_s)))
            if not rows:  # warm-up (numba compiles, first-call allocations): not timed
                run_clip(ev, peers, tracks[0], refs[tracks[0].track_id], tmp, args.reference_only, args.max_eq_db)
            for t in tracks:
                for r in run_clip(ev, peers, t, refs[t.track_id], tmp, args.reference_only, args.max_eq_db):
                    rows.append({"degrader": degrader, **r})
                log.info("%s %s done (load %s)", degrader, t.track_id, os.getloadavg()[0])
    startup = {} if args.reference_only else startup_seconds(args.model)
    table = summarise(rows)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), one thread",
        "load_before": load_before, "load_after": [round(v, 2) for v in os.getloadavg()],
        "corpus": args.corpus, "split": args.split, "clips": len(tracks), "clip_s": args.clip_s,
        "startup_s": startup, "summary": table, "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(reference_markdown(rows) if args.reference_only else markdown(table, startup))
    print(f"\n{len(tracks)} clips x {len(args.degraders.split(','))} damages; load {load_before} -> {result['load_after']}; {args.out}")


if __name__ == "__main__":
    main()
