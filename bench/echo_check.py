"""The echo stage before and after its confirmation check, on held-out music.

    python bench/echo_check.py [--split test] [--ours-seeds 1 2 3 4] [--pedalboard-seeds 1 2 3]

For every clean clip of the split (30 s, centred, 44.1 kHz): the clean clip itself, our chain's
damage (:func:`automaster.degrade.degrade`, one per seed) and pedalboard's
(:func:`automaster.pedalboard_damage.pedalboard_degrade`). Each goes through the echo stage twice, with
the mastering job's delay range and gain threshold:

* ``before``: :func:`automaster.dsp.cepstrum.estimate_echo`, undone when its gain >= threshold
  (the rule before the confirmation);
* ``after``: the mastering job's own stage (:func:`automaster.mastering.policy.remove_echo`:
  :func:`automaster.dsp.cepstrum.detect_echo`, undone when confirmed).

Reports per kind (clean / ours / pedalboard): the detection rate (true echo gain >= threshold,
removed within 3 ms of its delay), wrong removals (removed at another delay, or on a clean
clip), and the mean SI-SDR change against the clean clip. Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from automaster.audio import read_excerpt  # noqa: E402
from automaster.degrade import degrade_clip  # noqa: E402
from automaster.dsp.cepstrum import estimate_echo  # noqa: E402
from automaster.dsp.constants import MODEL_RATE  # noqa: E402
from automaster.dsp.metrics import si_sdr  # noqa: E402
from automaster.effects.echo import FRACTIONAL_HALF_TAPS, echo_inverse_time  # noqa: E402
from automaster.effects.params import BY_NAME  # noqa: E402
from automaster.mastering.policy import MIN_ECHO_GAIN, remove_echo  # noqa: E402
from automaster.pedalboard_damage import pedalboard_degrade  # noqa: E402
from automaster.pipelines.evaluate import list_clean  # noqa: E402

DELAY_TOLERANCE_S = 0.003


def echo_stage(audio: np.ndarray, confirm: bool, min_gain: float = MIN_ECHO_GAIN) -> tuple[np.ndarray, float | None, float | None]:
    """``(output, delay removed or None, gain)``: the mastering job's echo stage (``confirm``), or
    the rule it replaced (the strongest peak, undone from ``min_gain`` up)."""
    if confirm:
        out, note = remove_echo(audio, MODEL_RATE, min_gain)
        return out, (note["echo_delay_s"] if note["echo_removed"] else None), (note["echo_gain"] if note["echo_removed"] else None)
    delay, gain = BY_NAME["echo_delay_s"], BY_NAME["echo_gain"]
    longest = min(1.04 * delay.high, 0.25 * audio.shape[-1] / MODEL_RATE)
    found = estimate_echo(audio, MODEL_RATE, min_delay_s=0.9 * delay.low, max_delay_s=longest)
    usable = found.delay_s * MODEL_RATE >= 2 * FRACTIONAL_HALF_TAPS and delay.low <= found.delay_s <= delay.high
    if found.gain < min_gain or not usable:
        return audio, None, None
    return echo_inverse_time(audio, MODEL_RATE, found.delay_s, min(found.gain, gain.high)), found.delay_s, found.gain


def damaged_versions(clean: np.ndarray, track_id: str, ours: list[int], pedalboard: list[int]):
    """Yield ``(kind, seed, audio, true delay or None, true gain)``."""
    yield "clean", 0, clean, None, 0.0
    for seed in ours:
        r = degrade_clip(clean, MODEL_RATE, seed, track_id)
        yield "ours", seed, r.audio[0].numpy(), float(r.params["echo_delay_s"][0]), float(r.params["echo_gain"][0])
    for seed in pedalboard:
        d = pedalboard_degrade(clean, MODEL_RATE, seed, track_id)
        yield "pedalboard", seed, d.audio, float(d.params["echo_delay_s"]), float(d.params["echo_gain"])


def summarise(rows: list[dict]) -> dict:
    out = {}
    for kind in ("clean", "ours", "pedalboard"):
        group = [r for r in rows if r["kind"] == kind]
        if not group:
            continue
        strong = [r for r in group if r["true_gain"] >= MIN_ECHO_GAIN]
        entry = {"clips": len(group), "echoes_at_or_above_threshold": len(strong)}
        for rule in ("before", "after"):
            hits = [r for r in strong if r[f"{rule}_delay"] is not None and abs(r[f"{rule}_delay"] - r["true_delay"]) <= DELAY_TOLERANCE_S]
            wrong = [r for r in group if r[f"{rule}_delay"] is not None
                     and (r["true_delay"] is None or abs(r[f"{rule}_delay"] - r["true_delay"]) > DELAY_TOLERANCE_S)]  # fmt: skip
            entry[rule] = {
                "detection_rate": len(hits) / len(strong) if strong else None,
                "wrong_removals": len(wrong),
                "wrong_removal_rate": len(wrong) / len(group),
                # A clean clip's own SI-SDR is unbounded: give what a false removal leaves instead.
                "si_sdr_after_wrong_removals_db": [round(r[f"{rule}_si_sdr"], 2) for r in wrong],
            }
            if kind != "clean":
                change = [r[f"{rule}_si_sdr"] - r["input_si_sdr"] for r in group]
                entry[rule].update(mean_si_sdr_change_db=float(np.mean(change)), worst_si_sdr_change_db=float(np.min(change)))
        out[kind] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "fma_mini"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--ours-seeds", type=int, nargs="*", default=[1, 2, 3, 4])
    parser.add_argument("--pedalboard-seeds", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / f"echo_check-{time.strftime('%Y-%m-%d')}.json"))
    parser.add_argument("--min-gain", type=float, default=MIN_ECHO_GAIN, help="removal threshold of both rules")
    parser.add_argument("--reuse", action="store_true", help="summarise the rows already in --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.reuse:
        saved = json.loads(Path(args.out).read_text())
        saved["summary"] = summarise(saved["rows"])
        Path(args.out).write_text(json.dumps(saved, indent=1))
        print(json.dumps(saved["summary"], indent=1))
        return
    rows = []
    for row in list_clean(args.corpus, args.split, 0)[0]:
        clean, _ = read_excerpt(row["path"], 30.0, sample_rate=MODEL_RATE, mono=False, min_seconds=30.0)
        for kind, seed, audio, true_delay, true_gain in damaged_versions(clean, row["track_id"], args.ours_seeds, args.pedalboard_seeds):
            r = {"track_id": row["track_id"], "kind": kind, "seed": seed, "true_delay": true_delay, "true_gain": true_gain,
                 "input_si_sdr": si_sdr(audio, clean)}  # fmt: skip
            for rule, confirm in (("before", False), ("after", True)):
                out, delay, gain = echo_stage(audio, confirm, args.min_gain)
                r.update({f"{rule}_delay": delay, f"{rule}_gain": gain, f"{rule}_si_sdr": si_sdr(out, clean)})
            rows.append(r)
        print(f"{row['track_id']} done", file=sys.stderr)
    summary = summarise(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": vars(args), "summary": summary, "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
