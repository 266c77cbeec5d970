"""True peak against other meters: automaster's masters at ``--preset streaming`` (-14 LUFS, -1 dBTP)
read by automaster's 8x meter, a 32x windowed sinc, and ffmpeg resampling to 192 kHz with its own
resampler (swr, what its ebur128 filter's true peak uses) and with soxr.

    flock /tmp/heavy.lock python bench/true_peak_meters.py --corpus ../shared/data/fma_mini --songs 14

Prints one row per file and the largest reading of each meter (a ceiling is kept when every
meter's largest reading is at or under -1 dBTP); writes ``bench/results/true-peak-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def ffmpeg_peak_db(path: Path, resampler: str) -> float:
    """The sample peak (dBFS) of ``path`` resampled to 192 kHz by ffmpeg's ``resampler``."""
    cmd = ["ffmpeg", "-hide_banner", "-nostats", "-i", str(path), "-af",
           f"aresample=192000:resampler={resampler},astats=measure_overall=Peak_level:measure_perchannel=none", "-f", "null", "-"]
    out = subprocess.run(cmd, capture_output=True, text=True).stderr
    return float(re.findall(r"Peak level dB: (-?[\d.]+|-inf)", out)[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(HERE.parent / "shared" / "data" / "fma_mini"))
    p.add_argument("--songs", type=int, default=14)
    p.add_argument("--out", default=str(HERE / "bench" / "results"))
    args = p.parse_args()

    from automaster.audio import read_audio
    from automaster.dsp.loudness import true_peak_dbtp

    songs = sorted(Path(args.corpus).rglob("*.mp3"))[: args.songs]
    music = sorted((HERE.parent / "shared" / "data" / "music").glob("d0*.wav"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tp-") as tmp:
        for song in [*songs, *music]:
            out = Path(tmp) / f"{song.stem}.wav"
            subprocess.run([str(HERE / ".venv" / "bin" / "automaster"), "master", "--input", str(song), "--out", str(out),
                            "--preset", "streaming"], check=True, capture_output=True)
            y, sr = read_audio(str(out))
            rows.append({"file": song.name, "ours_8x": true_peak_dbtp(y, sr), "sinc_32x": true_peak_dbtp(y, sr, oversample=32),
                         "ffmpeg_swr_192k": ffmpeg_peak_db(out, "swr"), "ffmpeg_soxr_192k": ffmpeg_peak_db(out, "soxr")})
            print(json.dumps(rows[-1]))
    worst = {k: max(r[k] for r in rows) for k in ("ours_8x", "sinc_32x", "ffmpeg_swr_192k", "ffmpeg_soxr_192k")}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg(), "files": len(rows), "worst": worst, "rows": rows}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"true-peak-{time.strftime('%Y-%m-%d')}.json").write_text(json.dumps(result, indent=2))
    print("worst:", json.dumps(worst))


if __name__ == "__main__":
    main()
