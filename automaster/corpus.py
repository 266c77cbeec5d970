"""Corpus listing: the FMA layout or any folder of audio, one :class:`Track` row per file.

Listing never decodes audio: a broken file is still a row (the job that decodes it records the
error). Both layouts give deterministic rows, sorted by ``track_id``, whatever the machine:

* **FMA** (``fma_metadata/tracks.csv`` + ``fma_small|medium|large|full/NNN/NNNNNN.mp3``): split,
  genre and subset come from tracks.csv; ``track_id`` is the 6-digit zero-padded FMA id. Metadata
  rows of the subset with no file are reported in :attr:`CorpusScan.missing`; files with no
  metadata row get the folder rule's split and genre ``"unknown"`` (listed in ``unlisted``).
* **Any folder**: every audio file below the root (hidden files and folders skipped). The id is a
  filename-safe slug of the relative path plus 8 hex digits of its SHA-1; the split is 80/10/10
  training/validation/test from another hash of the relative path, so adding or removing files
  never moves the others.

The root may be a local path or a ``pyarrow.fs`` URI (``s3://bucket/fma``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
import posixpath
import re
import unicodedata
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pandas loads in 0.2 s: only the FMA metadata reader needs it
    import pandas as pd

from automaster import storage
from automaster.audio import AUDIO_EXTENSIONS, is_audio_file

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
UNKNOWN_GENRE = "unknown"
FMA_SUBSETS = ("fma_small", "fma_medium", "fma_large", "fma_full")
# FMA's ('set', 'subset') holds the smallest subset a track is in; the subsets are nested.
_SUBSET_MEMBERS = {
    "fma_small": {"small"},
    "fma_medium": {"small", "medium"},
    "fma_large": {"small", "medium", "large"},
    "fma_full": {"small", "medium", "large"},
}
_FMA_COLUMNS = {"split": ("set", "split"), "subset": ("set", "subset"), "genre": ("track", "genre_top")}
_SLUG_MAX = 48
# Latin letters that NFKD does not decompose into ASCII (the rest is dropped from slugs).
_TRANSLIT = str.maketrans({
    "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Œ": "OE", "œ": "oe", "ß": "ss", "Þ": "TH", "þ": "th",
    "Ð": "D", "ð": "d", "Đ": "D", "đ": "d", "Ł": "L", "ł": "l", "ı": "i",
})


class CorpusError(ValueError):
    """A corpus root that cannot be listed (missing, empty, malformed metadata)."""


@dataclasses.dataclass(frozen=True)
class Track:
    """One corpus row. ``path`` is a local path or URI; ``split`` one of :data:`SPLITS`."""

    track_id: str
    path: str
    split: str
    genre: str
    subset: str = ""


@dataclasses.dataclass(frozen=True)
class CorpusScan:
    """What listing a corpus found.

    Attributes:
        tracks: the rows, sorted by ``track_id``.
        missing: ``(track_id, expected path, reason)`` for metadata rows with no file (FMA only).
        unlisted: track ids of files that have no metadata row (FMA only; they are in ``tracks``).
        kind: ``"fma"`` or ``"folder"``.
        root: the folder the audio was listed from (for FMA, the ``fma_*`` subset folder).
        passed_over: ``(path, reason)`` for everything seen and not taken: hidden or non-audio
            files, FIFOs and devices, symbolic links to folders, unreadable folders.
    """

    tracks: list[Track]
    missing: list[tuple[str, str, str]]
    unlisted: list[str]
    kind: Literal["fma", "folder"]
    root: str
    passed_over: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def list_corpus(root: str | os.PathLike, *, limit: int = 0, genre_from_folder: bool = False) -> list[Track]:
    """The rows of the corpus at ``root`` (see :func:`scan_corpus`)."""
    return scan_corpus(root, limit=limit, genre_from_folder=genre_from_folder).tracks


def scan_corpus(
    root: str | os.PathLike, *, limit: int = 0, genre_from_folder: bool = False, exclude: tuple[str, ...] = ()
) -> CorpusScan:
    """List an FMA corpus or any folder of audio.

    Args:
        root: an FMA root (holding ``fma_metadata/`` and one ``fma_*/`` subset folder), an FMA subset
            folder itself (``.../fma_small``, metadata in the sibling ``fma_metadata``), or any folder.
        limit: keep only the first ``limit`` rows by ``track_id`` (0: all), for quick runs.
        genre_from_folder: for a plain folder, use the first folder level below ``root`` as the genre.
        exclude: paths (files or folders) below ``root`` to leave out entirely: a job's own
            output folder when it lies inside its input.

    Raises:
        CorpusError: ``root`` is missing or not a folder, holds no audio, holds several FMA subset
            folders, or its tracks.csv is not in FMA's format.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    root = os.fspath(root)
    if storage.is_local(root):
        root = storage.local_path(root)
    if not storage.exists(root):
        raise CorpusError(f"corpus root {root!r} does not exist")
    if not storage.is_dir(root):
        raise CorpusError(f"corpus root {root!r} is a file, not a folder")

    fma = _find_fma(root)
    if fma is not None:
        subset_dir, tracks_csv = fma
        scan = _scan_fma(subset_dir, tracks_csv, exclude)
    else:
        scan = _scan_folder(root, genre_from_folder, exclude)
    if limit:
        scan = dataclasses.replace(scan, tracks=scan.tracks[:limit])
    logger.info(
        "corpus %s (%s): %d tracks, %d missing, %d without metadata",
        scan.root, scan.kind, len(scan.tracks), len(scan.missing), len(scan.unlisted),
    )
    return scan


def folder_track_id(rel_path: str) -> str:
    """Stable, unique, filename-safe id for a file at ``rel_path`` (``/``-separated) below a root.

    ``"Rock/My Song (live).mp3"`` -> ``"rock_my_song_live-1a2b3c4d"``: an ASCII slug of the path
    without extension (at most 48 characters) and 8 hex digits of the SHA-1 of the whole relative
    path (Unicode NFC), so names that slug alike still get different ids.
    """
    rel = _normalise_rel(rel_path)
    stem = posixpath.splitext(rel)[0]
    folded = unicodedata.normalize("NFKD", stem.translate(_TRANSLIT))
    ascii_stem = folded.encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_stem.lower()).strip("_")[:_SLUG_MAX].rstrip("_")
    # surrogateescape: a name that is not UTF-8 (PEP 383 str) hashes by its bytes
    digest = hashlib.sha1(rel.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else f"track-{digest}"


def folder_split(rel_path: str) -> str:
    """Deterministic 80/10/10 training/validation/test split from a hash of ``rel_path``."""
    rel = _normalise_rel(rel_path)
    bucket = int(hashlib.sha1(f"split:{rel}".encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) % 100
    return "training" if bucket < 80 else "validation" if bucket < 90 else "test"


def _normalise_rel(rel_path: str) -> str:
    # NFC so that macOS (NFD file names) and Linux give the same id for the same name.
    return unicodedata.normalize("NFC", str(rel_path).replace(os.sep, "/").strip("/"))


# ------------------------------------------------------------------------------------ listing


def audio_files(root: str, exclude: tuple[str, ...] = ()) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(audio, passed_over)`` under ``root``: ``(path, relative path)`` of each audio file, and
    ``(path, reason)`` of everything else seen (hidden, not audio, not a regular file, a folder
    not entered). Anything under ``exclude`` is left out of both."""
    out, passed = [], []
    base = root.rstrip("/" + os.sep)
    skip = tuple(e.rstrip("/" + os.sep) for e in exclude)
    files, folders = storage.scan_files(root, recursive=True)
    passed.extend(folders)
    for path in files:
        if any(path == e or path.startswith(e + os.sep) or path.startswith(e + "/") for e in skip):
            continue
        rel = path[len(base) :].replace(os.sep, "/").lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            # .DS_Store, AppleDouble ._x.wav, .git/, temporary .x.tmp files, "..wav"
            passed.append((path, "hidden (its name or a folder's starts with '.')"))
        elif not is_audio_file(rel):
            passed.append((path, "not an audio file (by its extension)"))
        elif (reason := storage.not_regular_reason(path)) is not None:
            passed.append((path, reason))
        else:
            out.append((path, rel))
    return out, passed


def _no_audio_error(root: str) -> CorpusError:
    return CorpusError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under {root!r}")


def _scan_folder(root: str, genre_from_folder: bool, exclude: tuple[str, ...]) -> CorpusScan:
    files, passed = audio_files(root, exclude)
    if not files:
        raise _no_audio_error(root)
    tracks = []
    for path, rel in files:
        genre = UNKNOWN_GENRE
        if genre_from_folder and "/" in rel:
            genre = unicodedata.normalize("NFC", rel.split("/", 1)[0])
        tracks.append(Track(folder_track_id(rel), path, folder_split(rel), genre))
    tracks.sort(key=lambda t: t.track_id)
    ids = [t.track_id for t in tracks]
    assert len(set(ids)) == len(ids), "folder track ids collide (sha1 prefix clash)"
    return CorpusScan(tracks, [], [], "folder", root, passed)


def _find_fma(root: str) -> tuple[str, str] | None:
    """``(subset folder, tracks.csv)`` if ``root`` is an FMA root or subset folder, else None."""
    name = posixpath.basename(root.replace(os.sep, "/").rstrip("/"))
    if name in FMA_SUBSETS:
        parent = root.rstrip("/" + os.sep)[: -len(name)].rstrip("/" + os.sep) or "/"
        tracks_csv = storage.join(parent, "fma_metadata", "tracks.csv")
        if storage.is_file(tracks_csv):
            return root, tracks_csv
        logger.warning("%s looks like an FMA subset but has no %s; listing a plain folder", root, tracks_csv)
        return None
    tracks_csv = storage.join(root, "fma_metadata", "tracks.csv")
    if not storage.is_file(tracks_csv):
        return None
    subsets = [s for s in FMA_SUBSETS if storage.is_dir(storage.join(root, s))]
    if not subsets:
        raise CorpusError(
            f"{root!r} has fma_metadata/tracks.csv but no audio folder ({', '.join(FMA_SUBSETS)})"
        )
    if len(subsets) > 1:
        raise CorpusError(
            f"{root!r} holds several FMA subsets ({', '.join(subsets)}); pass the one to use, "
            f"e.g. {storage.join(root, subsets[0])!r}"
        )
    return storage.join(root, subsets[0]), tracks_csv


def read_fma_tracks(tracks_csv: str) -> pd.DataFrame:
    """Split, subset and genre of every track in FMA's tracks.csv.

    Returns a frame indexed by the 6-digit ``track_id`` string with string columns ``split``,
    ``subset``, ``genre`` (NaN where empty). Only these three columns are parsed: FMA's full
    tracks.csv has 106,574 rows of 52 columns, most of them free text.
    """
    data = storage.read_bytes(tracks_csv)
    header = list(csv.reader(io.StringIO(data[: 1 << 16].decode("utf-8", errors="replace"))))[:3]
    if len(header) < 3 or header[2][:1] != ["track_id"]:
        raise CorpusError(
            f"{tracks_csv!r} is not FMA's tracks.csv: expected two column-header rows and a "
            f"'track_id' line (read it with pd.read_csv(..., index_col=0, header=[0, 1]))"
        )
    columns = list(zip(header[0], header[1]))
    positions = {}
    for key, col in _FMA_COLUMNS.items():
        if col not in columns:
            raise CorpusError(f"{tracks_csv!r} has no column {col}")
        positions[key] = columns.index(col)
    import pandas as pd

    df = pd.read_csv(
        io.BytesIO(data), skiprows=3, header=None, index_col=0, dtype=str, keep_default_na=False,
        na_values=[""], usecols=[0, *positions.values()],
    )
    df = df.rename(columns={pos: key for key, pos in positions.items()})[list(positions)]
    try:
        df.index = [f"{int(i):06d}" for i in df.index]
    except ValueError as exc:
        raise CorpusError(f"{tracks_csv!r}: track_id column holds a non-integer ({exc})") from exc
    duplicated = df.index.duplicated()
    if duplicated.any():
        logger.warning("%s: %d duplicate track_id rows ignored", tracks_csv, int(duplicated.sum()))
        df = df[~duplicated]
    return df


def _scan_fma(subset_dir: str, tracks_csv: str, exclude: tuple[str, ...]) -> CorpusScan:
    subset_name = posixpath.basename(subset_dir.replace(os.sep, "/").rstrip("/"))
    meta = read_fma_tracks(tracks_csv)
    files, passed = audio_files(subset_dir, exclude)

    tracks: list[Track] = []
    unlisted: list[str] = []
    seen: set[str] = set()
    # Expected location first, so a stray duplicate elsewhere never takes a track's id.
    files.sort(key=lambda f: (not _is_fma_location(f[1]), f[1]))
    for path, rel in files:
        stem = posixpath.splitext(posixpath.basename(rel))[0]
        tid = f"{int(stem):06d}" if stem.isascii() and stem.isdigit() else None
        if tid is not None and tid not in seen and tid in meta.index:
            row = meta.loc[tid]
            split = row["split"] if row["split"] in SPLITS else folder_split(rel)
            genre = row["genre"].strip() if isinstance(row["genre"], str) else ""
            subset = row["subset"] if isinstance(row["subset"], str) else ""
            tracks.append(Track(tid, path, split, genre or UNKNOWN_GENRE, subset))
        else:
            if tid is None or tid in seen:
                tid = folder_track_id(rel)
                logger.warning("%s: not an FMA file name or a duplicate id; listed as %s", path, tid)
            tracks.append(Track(tid, path, folder_split(rel), UNKNOWN_GENRE, ""))
            unlisted.append(tid)
        seen.add(tid)

    members = _SUBSET_MEMBERS[subset_name]
    expected = meta.index[meta["subset"].isin(members)] if subset_name != "fma_full" else meta.index
    missing = [
        (tid, storage.join(subset_dir, tid[:3], f"{tid}.mp3"), "listed in tracks.csv but no audio file")
        for tid in sorted(set(expected) - seen)
    ]
    if not tracks:
        raise CorpusError(
            f"no audio files under {subset_dir!r} ({len(missing)} tracks of {subset_name} are listed "
            f"in {tracks_csv!r})"
        )
    tracks.sort(key=lambda t: t.track_id)
    return CorpusScan(tracks, missing, sorted(unlisted), "fma", subset_dir, passed)


def _is_fma_location(rel: str) -> bool:
    """True for ``NNN/NNNNNN.ext`` with the folder equal to the id's first three digits."""
    return re.fullmatch(r"(\d{3})/\1\d{3}\.[A-Za-z0-9]+", rel) is not None
