"""Build a training corpus of real, freely licensed recorded music from Debian's music packages.

    python tools/debian_corpus.py [--out /work/corpus/debian] [--packages a,b] [--min-duration-s 30]

Each candidate package is fetched with ``apt-get download`` (one at a time: some are over 1 GB),
its payload streamed out of the .deb with ``dpkg-deb --fsys-tarfile`` (audio inside .zip/.pk3
archives in the package included), and only music is kept, byte for byte (no transcoding):

* audio (``automaster.audio.AUDIO_EXTENSIONS`` and Ogg Opus; MIDI and tracker modules are not
  recorded audio);
* in a music folder (``music/``, ``songs/``, ...) or in a package that ships only music;
* not sound effects, voice or ambience folders, nor a rhythm game's separate instrument stems;
* at least ``--min-duration-s`` long (drops jingles, stingers and short loops);
* not a byte-identical copy (sha256) of a file already kept, in this package or another.

The output is a plain folder that ``automaster.corpus.scan_corpus`` reads:
``<out>/<package>/<path in the package>``, plus ``MANIFEST.csv`` (one row per file: source,
version, original path, duration, rate, channels, licence, sha256), ``LICENSES.md`` (a summary by
licence and by package) and ``LICENSES/<package>.copyright`` (each package's debian/copyright).
Per-package results are kept in ``<out>/.state/``; a rerun skips packages already extracted and
rewrites the manifest from all of them. The .deb files and everything that is not kept are
deleted as soon as a package is done.

Held out, never taken (see :data:`HELD_OUT`): the soundtracks kept for independent evaluation.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from typing import IO, Iterator

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from automaster.audio import AUDIO_EXTENSIONS, AudioError, audio_info, read_audio  # noqa: E402
from automaster.corpus import scan_corpus  # noqa: E402
from tools import corpus_manifest  # noqa: E402
from tools.debian_copyright import licence_for  # noqa: E402

logger = logging.getLogger("debian_corpus")

DEFAULT_OUT = "/work/corpus/debian"
DEFAULT_MIN_DURATION_S = 30.0

# Package-name patterns never taken, with the reason (checked before anything is downloaded).
HELD_OUT = {
    "wesnoth-*-music": "Wesnoth soundtrack: held out for independent evaluation (issue 12)",
    "wesnoth-music": "Wesnoth soundtrack: held out for independent evaluation (issue 12)",
    "nexuiz-music": "Nexuiz soundtrack: held out for independent evaluation (issue 12)",
    "fretsonfire-songs-muldjord": "Muldjord songs: held out for independent evaluation (issue 12)",
    "wesnoth-*": "Wesnoth: campaigns carry more of the held-out Wesnoth soundtrack",
    "nexuiz*": "Nexuiz: data packages carry more of the held-out Nexuiz soundtrack",
}
# Songs of fma_mini's validation and test splits: taking them would leak evaluation audio.
HELD_OUT_FILES = {
    "hyperrogue-music": {
        f"usr/share/hyperrogue/music/hr-{name}.ogg": "fma_mini validation/test song"
        for name in (
            "domina-hunting", "domina-mountain", "savino-caribbean", "savino-ivory",
            "savino-ocean", "savino-palace",
        )
    },
}

# Packages whose audio is all music, wherever it lies.
MUSIC_PACKAGES = frozenset({
    "asc-music", "drascula-music", "fb-music-high", "hyperrogue-music", "planetblupi-music-ogg",
    "pushover-data", "singularity-music", "tomatoes-data", "ufoai-music", "warzone2100-music",
    "xblast-tnt-musics",
})
# Music outside music folders, found by listing each package's largest skipped audio (patterns on
# the lowercased path; the duration rule still applies).
EXTRA_MUSIC = {
    "supertuxkart-data": ("usr/share/games/supertuxkart/data/tracks/*/*.ogg",),  # each track's own theme
    "redeclipse-data": ("usr/share/games/redeclipse/data/sounds/theme.ogg",
                        "usr/share/games/redeclipse/data/sounds/original.ogg",
                        "usr/share/games/redeclipse/data/maps/*.ogg"),  # menu themes, map music
    "freedink-data": ("usr/share/games/dink/dink/sound/*.ogg",),  # Dink's music is Ogg; its effects WAV
    "freeorion-data": ("usr/share/games/freeorion/default/data/sound/artificial_intelligence*.ogg",),
    "marsshooter-data": ("usr/share/games/marsshooter/audio/*.ogg",),  # menu and tutorial themes
    "adonthell-data": ("usr/share/games/adonthell/games/wastesedge/audio/at-*.ogg",),
    "bumprace-data": ("usr/share/games/bumprace/sound/flying_me_softly.ogg",),
    "funnyboat": ("usr/share/games/funnyboat/data/jdruid-*.ogg",),
    "gamine-data": ("usr/share/games/gamine/sounds/bach*.ogg",),
    "noiz2sa-data": ("usr/share/games/noiz2sa/sounds/stg*.ogg",),  # stage music
}
# File names that say music (music.ogg, mus1.ogg, frozen-mainzik-1p.ogg), in any folder but effects.
MUSIC_NAME = re.compile(r"music|musique|zik|soundtrack|^mus\d+$|(^|[-_ ])(bgm|theme)([-_ \d]|$)")
# Checked by hand from the bookworm archive's game and music packages (apt-cache search music,
# section games by size); a package that holds no music costs one download and is reported.
CANDIDATES = (
    "fb-music-high", "asc-music", "planetblupi-music-ogg", "boswars-data", "supertuxkart-data",
    "0ad-data", "widelands-data", "supertux-data", "colobot-common-sounds", "hedgewars-data",
    "openclonk-data", "hyperrogue-music", "singularity-music", "warzone2100-music",
    "drascula-music", "ufoai-music", "xblast-tnt-musics", "tomatoes-data", "pushover-data",
    "fretsonfire-songs-sectoid", "fillets-ng-data", "garden-of-coloured-lights-data",
    "tecnoballz-data", "openttd-openmsx", "redeclipse-data", "megaglest-data", "naev-data",
    "unknown-horizons", "freedroidrpg-data", "flare-game", "freeorion-data", "trigger-rally-data",
    "warmux-data", "7kaa-data", "freedink-data", "neverball-data", "blobandconquer-data",
    "scorched3d-data", "blobwars-data", "marsshooter-data", "xmoto-data", "krank",
    "lincity-ng-data", "starfighter-data", "extremetuxracer-data", "enigma-data",
    "trackballs-data", "plee-the-bear-data", "lugaru-data", "netpanzer-data", "btanks-data",
    "ardentryst", "lordsawar-data", "glob2-data", "gigalomania-data", "pingus-data", "zaz-data",
    "powermanga-data", "tuxfootball", "wizznic-data", "pekka-kana-2-data", "adonthell-data",
    "caveexpress-data", "pachi-data", "pink-pony-data", "brainparty-data", "tuxmath-data",
    "tuxtype-data", "alienblaster-data", "mazeofgalious-data", "kraptor-data", "kball-data",
    "atanks-data", "raincat-data", "hex-a-hop-data", "berusky2-data", "dreamchess-data",
    "amoebax-data", "teeworlds-data", "pax-britannica-data", "holotz-castle-data",
    "freegish-data", "torus-trooper-data", "mu-cade-data", "noiz2sa-data", "ri-li-data",
    "torcs-data", "cube2-data", "openarena-088-data", "openarena-data", "etw-data",
    "rafkill-data", "bomberclone-data", "manaplus-data", "minetest-data", "gl-117-data",
    "lbreakouthd-data", "billard-gl-data", "foobillardplus-data", "pokerth-data",
    "davegnukem-data", "ironseed-data", "mrrescue", "miceamaze", "blockattack",
    "liquidwar-data", "pinball-data", "dustracing2d-data", "renpy-thequestion", "frozen-bubble-data",
    "warzone2100-data", "freecol", "searchandrescue-data", "crrcsim-data", "ktuberling-data",
    "stax", "funnyboat", "solarwolf", "pathological", "angrydd", "gamine-data", "epiphany-data",
    "neverball-common", "gcompris-qt-data", "tuxpaint-data", "circuslinux-data", "madbomber-data",
    "lbreakout2-data", "chromium-bsu-data", "toppler", "mirrormagic", "armagetronad-common",
    "crack-attack", "mrboom", "bumprace-data", "sdl-ball-data", "pangzero", "njam-data",
    "viruskiller", "stormbaancoureur-data", "wing-data", "ceferino-data", "luola-data", "triplane",
    "whichwayisup", "hannah-data", "monsterz-data", "penguin-command", "ltris", "icebreaker",
    "tuxpuck", "vectoroids", "kobodeluxe", "abe", "sopwith", "bugsquish", "gweled", "lmarbles",
    "cultivation", "between", "dangen", "xsoldier", "moon-buggy", "xgalaga++", "slimevolley-data",
    "freeciv-data", "jumpnbump-levels", "crimson", "zatacka",
)

MUSIC_DIRS = frozenset({"music", "musics", "musik", "musique", "songs", "soundtrack", "soundtracks", "bgm"})
NOT_MUSIC_DIRS = frozenset({
    "sfx", "voice", "voices", "speech", "dialog", "dialogs", "dialogue", "narration",
    "ambient", "ambience", "ambiences", "ambiance", "ambiances",
})
# Sound-effect folders: audio there is music only when a music folder is in the path too.
SOUND_DIRS = frozenset({"sound", "sounds", "snd", "effects", "samples"})
# A rhythm game's song folder holds the mix (song.ogg) and the instrument parts the player plays.
STEM_NAMES = frozenset({"guitar", "rhythm", "drums", "bass", "vocals", "crowd", "preview"})
ARCHIVE_EXTENSIONS = frozenset({".zip", ".pk3"})
# Ogg Opus (libsndfile decodes it) is stored as "<name>.opus.ogg": the corpus reader lists .ogg.
OPUS_EXTENSION = ".opus"
CANDIDATE_EXTENSIONS = AUDIO_EXTENSIONS | {OPUS_EXTENSION}
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


class UsageError(ValueError):
    """A bad command-line value: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2 (via main), not argparse's usage block
        raise UsageError(message)


# ------------------------------------------------------------------------------------ rules


def held_out_reason(package: str) -> str | None:
    """Why ``package`` is never taken (held out for evaluation), or None."""
    for pattern, reason in HELD_OUT.items():
        if fnmatch.fnmatchcase(package, pattern):
            return reason
    return None


def not_music_reason(package: str, path: str) -> str | None:
    """Why the audio file at ``path`` in ``package`` is not taken as music, or None if it is.

    ``path`` is the path inside the package (``usr/share/games/x/music/a.ogg``; a member of an
    archive in the package as ``a/data.zip!/music/a.ogg``). Duration is checked separately.
    """
    path = path.lstrip("./")
    if HELD_OUT_FILES.get(package, {}).get(path):
        return "held out: " + HELD_OUT_FILES[package][path]
    if any(fnmatch.fnmatchcase(path.lower(), pattern) for pattern in EXTRA_MUSIC.get(package, ())):
        return None
    # Folder names without extensions: OpenClonk keeps its music in "Music.ocg/".
    folders = [os.path.splitext(part)[0].lower() for part in re.split(r"/|!/", path)[:-1]]
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    blocked = sorted(NOT_MUSIC_DIRS.intersection(folders))
    if blocked:
        return f"in a {blocked[0]}/ folder"
    if "songs" in folders and stem in STEM_NAMES:
        return "an instrument stem of a song, not the mix"
    if MUSIC_DIRS.intersection(folders) or MUSIC_NAME.search(stem):
        return None
    sound_dirs = sorted(SOUND_DIRS.intersection(folders))
    if sound_dirs:
        return f"in a {sound_dirs[0]}/ folder"
    if package in MUSIC_PACKAGES:
        return None
    return "not in a music folder"


def corpus_rel_path(package: str, path: str) -> str:
    """Where a kept file goes below ``--out``: ``<package>/<path without usr/share/[games/]>``."""
    path = re.sub(r"^(\./)?usr/share/(games/)?", "", path)
    path = re.sub(r"\.(zip|pk3)!/", r"_\1/", path)  # public.zip!/audio/x.ogg -> public_zip/audio/x.ogg
    if path.lower().endswith(OPUS_EXTENSION):
        path += ".ogg"
    return f"{package}/{path}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the command line; :class:`UsageError` names the bad flag and value."""
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="corpus folder (default %(default)s)")
    parser.add_argument("--packages", default="", help="comma-separated packages (default: the built-in list)")
    parser.add_argument("--min-duration-s", type=float, default=DEFAULT_MIN_DURATION_S,
                        help="shortest file kept, seconds (default %(default)s)")
    parser.add_argument("--no-update", action="store_true", help="skip the initial apt-get update")
    parser.add_argument("--verify", action="store_true",
                        help="only check that scan_corpus lists and read_audio decodes every manifest row")
    parser.add_argument("--list", action="store_true", help="print the candidates and the held-out rules, then exit")
    args = parser.parse_args(argv)
    if not (args.min_duration_s > 0 and args.min_duration_s < float("inf")):
        raise UsageError(f"--min-duration-s must be > 0, got {args.min_duration_s}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} is a file, not a folder")
    if args.verify and not os.path.isfile(os.path.join(args.out, "MANIFEST.csv")):
        raise UsageError(f"--verify: no MANIFEST.csv in --out {args.out!r}")
    names = [name.strip() for name in args.packages.split(",") if name.strip()] or list(CANDIDATES)
    for name in names:
        if not _PACKAGE_NAME.match(name):
            raise UsageError(f"--packages: {name!r} is not a Debian package name")
        if held_out_reason(name):
            raise UsageError(f"--packages: {name} is never taken ({held_out_reason(name)})")
    args.package_list = list(dict.fromkeys(names))
    return args


# --------------------------------------------------------------------------- apt and dpkg-deb


def _run(cmd: list[str], cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def is_available(package: str) -> bool:
    """True if apt knows a candidate version of ``package``."""
    result = _run(["apt-cache", "policy", package])
    return result.returncode == 0 and re.search(r"Candidate: (?!\(none\))", result.stdout) is not None


def download(package: str, work: str) -> str:
    """``apt-get download`` ``package`` into ``work``; the .deb's path."""
    for stale in glob.glob(os.path.join(work, f"{package}_*.deb")):
        os.remove(stale)
    result = _run(["apt-get", "download", "-q", package], cwd=work)
    debs = glob.glob(os.path.join(work, f"{package}_*.deb"))
    if result.returncode != 0 or len(debs) != 1:
        raise RuntimeError(f"apt-get download {package} failed: {result.stderr.strip()[-300:]}")
    return debs[0]


def deb_version(deb: str) -> str:
    result = _run(["dpkg-deb", "-f", deb, "Version"])
    if result.returncode != 0:
        raise RuntimeError(f"dpkg-deb -f {deb}: {result.stderr.strip()}")
    return result.stdout.strip()


def iter_payload(deb: str, work: str) -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes] | None]]:
    """``(path, member, reader)`` for each entry of the .deb's payload, streamed (no full extraction).

    Audio inside .zip/.pk3 archives is yielded as ``archive!/member`` (the archive is spooled to
    ``work`` while it is read). ``reader`` is None for entries that are not regular files.
    """
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
            for member in tar:
                path = member.name.lstrip("./")
                if not member.isfile():
                    yield path, member, None
                    continue
                reader = tar.extractfile(member)
                if os.path.splitext(path)[1].lower() in ARCHIVE_EXTENSIONS:
                    yield from _iter_archive(path, member, reader, work)
                else:
                    yield path, member, reader
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            logger.warning("dpkg-deb --fsys-tarfile %s exited %s", deb, proc.returncode)


def _iter_archive(path: str, member: tarfile.TarInfo, reader: IO[bytes], work: str):
    spool = os.path.join(work, "archive.tmp")
    with open(spool, "wb") as out:
        shutil.copyfileobj(reader, out, 1 << 20)
    try:
        with zipfile.ZipFile(spool) as archive:
            for info in archive.infolist():
                if not info.is_dir() and os.path.splitext(info.filename)[1].lower() in CANDIDATE_EXTENSIONS:
                    inner = tarfile.TarInfo(f"{path}!/{info.filename}")
                    inner.size = info.file_size
                    with archive.open(info) as handle:
                        yield inner.name, inner, handle
    except zipfile.BadZipFile as exc:
        logger.warning("%s: not a readable zip archive (%s)", path, exc)
    finally:
        os.remove(spool)


# ----------------------------------------------------------------------------------- packages


def process_package(package: str, deb: str, out: str, seen: dict[str, str], min_duration_s: float) -> dict:
    """Keep the music of one downloaded package under ``out/<package>/``; its state record.

    ``seen`` maps the sha256 of every file kept so far to its corpus path; it is updated. The
    record holds the manifest rows (``rows``), the copyright text and what was left out and why.
    """
    work = os.path.dirname(deb)
    staging = os.path.join(work, "candidate.tmp")
    shutil.rmtree(os.path.join(out, package), ignore_errors=True)  # a half-done earlier attempt
    rows, dropped, duplicates, unreadable = [], collections.Counter(), [], []
    largest_skipped: list[tuple[int, str]] = []
    copyright_text, doc_link = "", None
    doc_dir = f"usr/share/doc/{package}"
    for path, member, reader in iter_payload(deb, work):
        if path == doc_dir and member.issym():
            doc_link = member.linkname
        if reader is None:
            continue
        if path == f"{doc_dir}/copyright":
            copyright_text = reader.read().decode("utf-8", "replace")
            continue
        if os.path.splitext(path)[1].lower() not in CANDIDATE_EXTENSIONS:
            continue
        reason = not_music_reason(package, path)
        if reason:
            dropped[reason] += 1
            largest_skipped = sorted(largest_skipped + [(member.size, path)], reverse=True)[:10]
            continue
        sha256 = _spool(reader, staging)
        row, reason = _check_candidate(package, path, staging, sha256, min_duration_s)
        if row is not None and sha256 in seen:
            duplicates.append({"original_path": path, "sha256": sha256, "same_as": seen[sha256]})
            reason = "a byte-identical copy of a file already kept"
        if reason:
            dropped[reason.split(" (")[0]] += 1
            if reason.startswith("unreadable"):
                unreadable.append({"original_path": path, "reason": reason})
            os.remove(staging)
            continue
        target = os.path.join(out, row["path"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(staging, target)
        seen[sha256] = row["path"]
        rows.append(row)
    return {
        "package": package, "version": deb_version(deb), "status": "done", "rows": rows,
        "dropped": dict(dropped), "duplicates": duplicates, "unreadable": unreadable,
        "largest_not_music": [{"bytes": size, "path": path} for size, path in largest_skipped],
        "copyright": copyright_text, "doc_link": doc_link,
    }


def _spool(reader: IO[bytes], path: str) -> str:
    """Copy ``reader`` to ``path``; the sha256 of the bytes."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _check_candidate(package: str, path: str, local: str, sha256: str, min_duration_s: float):
    """``(manifest row, None)`` for a music file long enough, else ``(None, reason)``."""
    try:
        info = audio_info(local)
    except AudioError as exc:
        return None, f"unreadable audio ({exc.reason})"
    duration_s = info.duration_s
    if info.format == "MP3":  # without a Xing/LAME header the frame count is an estimate: decode
        audio, rate = read_audio(local, mono=True)
        duration_s = audio.shape[1] / rate
    if duration_s < min_duration_s:
        return None, f"shorter than {min_duration_s:g} s"
    row = {
        "path": corpus_rel_path(package, path), "package": package, "version": "",
        "original_path": path, "duration_s": round(duration_s, 3),
        "sample_rate": info.sample_rate, "channels": info.channels,
        "format": f"{info.format}/{info.subtype}", "licence": "",
        "size_bytes": os.path.getsize(local), "sha256": sha256,
    }
    return row, None


def copyright_of(package: str, record: dict, work: str) -> str:
    """The package's copyright text; from the package its doc folder links to when it has none."""
    if record["copyright"] or not record["doc_link"]:
        return record["copyright"]
    owner = os.path.basename(record["doc_link"].rstrip("/"))
    try:
        deb = download(owner, work)
    except RuntimeError as exc:
        logger.warning("%s: doc folder links to %s, whose copyright could not be read: %s", package, owner, exc)
        return ""
    try:
        for path, _, reader in iter_payload(deb, work):
            if reader is not None and path == f"usr/share/doc/{owner}/copyright":
                return reader.read().decode("utf-8", "replace")
        return ""
    finally:
        os.remove(deb)


def assign_licences(record: dict) -> None:
    """Set each row's version and licence from the record (redone at every manifest write, so
    that a better licence rule applies to packages extracted earlier)."""
    for row in record["rows"]:
        row["version"] = record["version"]
        row["licence"] = licence_for(row["original_path"], record["copyright"]) if record["copyright"] else "unknown"


def build_package(package: str, out: str, work: str, seen: dict[str, str], min_duration_s: float) -> dict:
    """Download, extract and clean up one package; its state record (status done/unavailable/failed)."""
    if not is_available(package):
        return {"package": package, "status": "unavailable", "rows": []}
    started = time.monotonic()
    deb = download(package, work)
    deb_bytes = os.path.getsize(deb)
    try:
        record = process_package(package, deb, out, seen, min_duration_s)
    finally:
        os.remove(deb)
    record["copyright"] = copyright_of(package, record, work)
    assign_licences(record)
    record.update(deb_bytes=deb_bytes, seconds=round(time.monotonic() - started, 1))
    return record


# ----------------------------------------------------------------------------------------- run


def load_records(state_dir: str) -> dict[str, dict]:
    """The records of the packages already extracted (``<out>/.state/<package>.json``)."""
    records = {}
    for path in sorted(glob.glob(os.path.join(state_dir, "*.json"))):
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        records[record["package"]] = record
    return records


def save_record(state_dir: str, record: dict) -> None:
    path = os.path.join(state_dir, f"{record['package']}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        json.dump(record, out, indent=1)
    os.replace(path + ".tmp", path)


def write_outputs(out: str, records: list[dict]) -> None:
    """MANIFEST.csv and the licence files, from every package extracted into ``out``."""
    for record in records:
        assign_licences(record)
    rows = [row for record in records for row in record["rows"]]
    corpus_manifest.write_manifest(rows, os.path.join(out, "MANIFEST.csv"))
    corpus_manifest.write_licences(records, out, HELD_OUT)


def build_corpus(out: str, packages: list[str], min_duration_s: float) -> list[dict]:
    """Extract the music of ``packages`` into ``out`` (skipping those already done); all records."""
    state_dir, work = os.path.join(out, ".state"), os.path.join(out, ".work")
    os.makedirs(state_dir, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    records = load_records(state_dir)
    seen = {row["sha256"]: row["path"] for record in records.values() for row in record["rows"]}
    for index, package in enumerate(packages, 1):
        if records.get(package, {}).get("status") == "done":
            logger.info("[%d/%d] %s: already extracted, skipped", index, len(packages), package)
            continue
        before = dict(seen)
        try:
            record = build_package(package, out, work, seen, min_duration_s)
        except (RuntimeError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
            seen.clear()
            seen.update(before)
            shutil.rmtree(os.path.join(out, package), ignore_errors=True)
            record = {"package": package, "status": "failed", "error": str(exc), "rows": []}
        if record["status"] == "done":
            save_record(state_dir, record)
        t = corpus_manifest.totals(record["rows"])
        logger.info("[%d/%d] %s: %s, %d files, %.2f h kept", index, len(packages), package,
                    record["status"], t["songs"], t["hours"])
        records[package] = record
    shutil.rmtree(work, ignore_errors=True)
    return [records[name] for name in sorted(records)]


def verify_corpus(out: str) -> list[str]:
    """Problems found when the project reads the corpus back: every MANIFEST.csv row must be listed
    by ``scan_corpus`` and decode with ``read_audio`` to its recorded length (and nothing else listed)."""
    rows = corpus_manifest.read_manifest(os.path.join(out, "MANIFEST.csv"))
    listed = {os.path.relpath(t.path, out).replace(os.sep, "/") for t in scan_corpus(out).tracks}
    problems = [f"{path}: listed by scan_corpus but not in MANIFEST.csv" for path in sorted(listed - {r["path"] for r in rows})]
    for index, row in enumerate(rows, 1):
        if row["path"] not in listed:
            problems.append(f"{row['path']}: not listed by scan_corpus")
            continue
        try:
            audio, rate = read_audio(os.path.join(out, row["path"]))
        except AudioError as exc:
            problems.append(f"{row['path']}: {exc.reason}")
            continue
        if abs(audio.shape[1] / rate - row["duration_s"]) > 0.1 or audio.shape[0] != row["channels"]:
            problems.append(f"{row['path']}: decoded {audio.shape} at {rate} Hz, manifest says "
                            f"{row['duration_s']} s x {row['channels']} channels")
        if index % 100 == 0:
            logger.info("verified %d/%d files", index, len(rows))
    return problems


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"debian_corpus: error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(args.package_list))
        print("\n".join(f"never: {pattern}: {reason}" for pattern, reason in HELD_OUT.items()))
        return 0
    if args.verify:
        problems = verify_corpus(os.path.abspath(args.out))
        print("\n".join(problems) or f"verified: every file of {args.out}/MANIFEST.csv is listed and decodes")
        return 1 if problems else 0
    missing = [tool for tool in ("apt-get", "apt-cache", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        print(f"debian_corpus: error: needs Debian's {', '.join(missing)} on PATH", file=sys.stderr)
        return 1
    out = os.path.abspath(args.out)
    if not args.no_update:
        result = _run(["apt-get", "update", "-q"])
        if result.returncode != 0:
            logger.warning("apt-get update failed (using the current lists): %s", result.stderr.strip()[-200:])
    records = build_corpus(out, args.package_list, args.min_duration_s)
    write_outputs(out, records)
    print("\n".join(corpus_manifest.summary_lines(records)))
    print(f"manifest: {os.path.join(out, 'MANIFEST.csv')}")
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
