"""Re-make the committed test data in tests/data (see README.md there).

    python tests/data/make_fixtures.py                     # FMA fixture from tests/data/music
    python tests/data/make_fixtures.py --music-from DIR    # also re-make tests/data/music from DIR

``tests/data/music`` holds d01 (public domain) and d02 (CC BY 3.0) as lossless FLAC plus the MP3 of
d01; with ``--music-from`` they are rebuilt from the 16-bit WAVs and ``000/000002.mp3`` of the
source folder (the project's shared ``data/music``). ``tests/data/fma`` is always rebuilt from the
FLACs, so a fresh clone can re-make it. Output is deterministic (same input, same bytes).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from audio_fixtures import id3_tag  # noqa: E402  (tests/audio_fixtures.py)

MUSIC = HERE / "music"
FMA = HERE / "fma"
D01 = "d01_librosa_brahms_hungarian_dance_5"
D02 = "d02_librosa_kevin_macleod_sugar_plum_fairy"
SR = 44100

# FMA's tracks.csv columns, in FMA's order (two header rows: group, name).
COLUMNS = [
    ("album", c) for c in "comments date_created date_released engineer favorites id information "
    "listens producer tags title tracks type".split()
] + [
    ("artist", c) for c in "active_year_begin active_year_end associated_labels bio comments "
    "date_created favorites id latitude location longitude members name related_projects tags "
    "website wikipedia_page".split()
] + [("set", "split"), ("set", "subset")] + [
    ("track", c) for c in "bit_rate comments composer date_created date_recorded duration favorites "
    "genre_top genres genres_all information interest language_code license listens lyricist "
    "number publisher tags title".split()
]
assert len(COLUMNS) == 52

SOURCES = {
    D01: dict(
        artist="US Army Strings", composer="Johannes Brahms", title="Hungarian Dance No. 5",
        album="librosa example recordings", license="Public Domain", artist_id=901, album_id=801,
    ),
    D02: dict(
        artist="Kevin MacLeod", composer="Pyotr Ilyich Tchaikovsky, arr. Kevin MacLeod",
        title="Dance of the Sugar Plum Fairy", album="librosa example recordings",
        license="Attribution 3.0 International (CC BY 3.0)", artist_id=902, album_id=801,
    ),
}
GENRE_IDS = {"Classical": "[5]", "Instrumental": "[1235]", "Rock": "[12]", "": "[]"}


# (track id, kind, source, start s, length s, split, subset, genre_top, channels, rate)
# kind: clip (MP3 of the excerpt), broken (ID3 tag only), silent, none (metadata row, no file).
TRACKS = [
    (2, "clip", D01, 0.0, 5.0, "training", "small", "Classical", 2, 44100),
    (3, "clip", D02, 0.0, 5.0, "training", "small", "Classical", 2, 44100),
    (5, "clip", D01, 5.0, 5.0, "validation", "small", "Classical", 1, 44100),
    (10, "clip", D02, 5.0, 5.0, "test", "small", "", 2, 48000),
    (1666, "broken", D01, 0.0, 30.0, "training", "small", "Classical", 2, 44100),
    (1777, "silent", None, 0.0, 5.0, "test", "small", "Instrumental", 2, 44100),
    (1888, "clip", D02, 1.0, 1.5, "training", "small", "Classical", 2, 44100),
    # Rows of bigger subsets: in tracks.csv (as in FMA) but not part of fma_small.
    (2000, "none", D01, 0.0, 30.0, "training", "medium", "Rock", 2, 44100),
    (3000, "none", D02, 0.0, 30.0, "test", "large", "Instrumental", 2, 44100),
]


def remake_music(source: Path) -> None:
    MUSIC.mkdir(parents=True, exist_ok=True)
    for name in (D01, D02):
        pcm, sr = sf.read(source / f"{name}.wav", dtype="int16", always_2d=True)
        sf.write(MUSIC / f"{name}.flac", pcm, sr, subtype="PCM_16", compression_level=1.0)
    shutil.copyfile(source / "000" / "000002.mp3", MUSIC / f"{D01}.mp3")


def encode_mp3(path: Path, audio: np.ndarray, sample_rate: int, title: str) -> None:
    """CBR 128 kbit/s MP3 (LAME via libsndfile), written in blocks; ``audio`` is ``(T, C)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(
        path, "w", sample_rate, audio.shape[1], format="MP3",
        bitrate_mode="CONSTANT", compression_level=0.667,
    ) as f:
        f.title = title
        f.comment = "automaster test fixture, not a Free Music Archive track"
        for i in range(0, audio.shape[0], 1 << 16):
            f.write(audio[i : i + (1 << 16)])


def remake_fma() -> None:
    if FMA.exists():
        shutil.rmtree(FMA)
    music = {n: sf.read(MUSIC / f"{n}.flac", dtype="float32", always_2d=True)[0] for n in (D01, D02)}
    rows = []
    for tid, kind, src, start_s, length_s, split, subset, genre, channels, rate in TRACKS:
        tid_s = f"{tid:06d}"
        path = FMA / "fma_small" / tid_s[:3] / f"{tid_s}.mp3"
        meta = SOURCES[src] if src else dict(
            artist="automaster", composer="", title="Digital silence", album="automaster fixtures",
            license="CC0 1.0", artist_id=903, album_id=802,
        )
        title = meta["title"]
        if kind == "clip":
            excerpt = music[src][int(start_s * SR) : int((start_s + length_s) * SR)]
            if channels == 1:
                excerpt = excerpt.mean(axis=1, keepdims=True)
            if rate != SR:
                excerpt = soxr.resample(excerpt, SR, rate, quality="VHQ")
            encode_mp3(path, excerpt, rate, title)
        elif kind == "silent":
            encode_mp3(path, np.zeros((int(length_s * rate), channels), np.float32), rate, title)
        elif kind == "broken":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(id3_tag(title))
        info = (
            f"<p>automaster fixture ({kind}): {start_s:.2f}-{start_s + length_s:.2f} s of {src or 'silence'}"
            f" at {rate} Hz, {channels} ch. Not a Free Music Archive track.</p>"
        )
        values = {
            ("album", "id"): meta["album_id"], ("album", "title"): meta["album"], ("album", "type"): "Album",
            ("album", "tags"): "[]", ("artist", "id"): meta["artist_id"], ("artist", "name"): meta["artist"],
            ("artist", "tags"): "[]", ("set", "split"): split, ("set", "subset"): subset,
            ("track", "bit_rate"): 128000, ("track", "composer"): meta["composer"],
            ("track", "duration"): int(round(length_s)), ("track", "genre_top"): genre,
            ("track", "genres"): GENRE_IDS[genre], ("track", "genres_all"): GENRE_IDS[genre],
            ("track", "information"): info, ("track", "license"): meta["license"],
            ("track", "tags"): "[]", ("track", "title"): title,
        }
        counts = {c for c in COLUMNS if c[1] in ("comments", "favorites", "listens", "interest")}
        rows.append([tid] + [values.get(c, 0 if c in counts else "") for c in COLUMNS])

    csv_path = FMA / "fma_metadata" / "tracks.csv"
    csv_path.parent.mkdir(parents=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([""] + [g for g, _ in COLUMNS])
        w.writerow([""] + [n for _, n in COLUMNS])
        w.writerow(["track_id"] + [""] * len(COLUMNS))
        w.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--music-from", type=Path, help="folder with the d01/d02 WAVs and 000/000002.mp3")
    args = ap.parse_args()
    if args.music_from:
        remake_music(args.music_from)
    remake_fma()
    for p in sorted(HERE.rglob("*")):
        if p.is_file() and p.suffix in (".flac", ".mp3", ".csv"):
            print(f"{p.stat().st_size:>9,d}  {p.relative_to(HERE)}")


if __name__ == "__main__":
    main()
