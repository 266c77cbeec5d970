"""tools/debian_corpus.py without the network: the held-out rule, the music filter on real .deb
files built from tests/data, duplicates, licences, the manifest, resume and argument errors."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import soundfile as sf

from automaster.audio import audio_info, read_audio
from automaster.corpus import scan_corpus
from tools import corpus_manifest
from tools import debian_corpus as dc
from tools.debian_copyright import licence_for

DATA = Path(__file__).parent / "data"
D01_FLAC = DATA / "music" / "d01_librosa_brahms_hungarian_dance_5.flac"  # 10 s
D01_MP3 = DATA / "music" / "d01_librosa_brahms_hungarian_dance_5.mp3"  # 10 s
D02_FLAC = DATA / "music" / "d02_librosa_kevin_macleod_sugar_plum_fairy.flac"  # 10 s
CLIP_5S = DATA / "fma" / "fma_small" / "000" / "000002.mp3"  # 5 s
CLIP_5S_OTHER = DATA / "fma" / "fma_small" / "000" / "000003.mp3"  # 5 s, other audio
CLIP_1S5 = DATA / "fma" / "fma_small" / "001" / "001888.mp3"  # 1.5 s
BROKEN = DATA / "fma" / "fma_small" / "001" / "001666.mp3"  # an ID3 tag, no audio
MIN_S = 4.0

COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: data/music/*
Copyright: 2020 A Composer
License: CC-BY-SA-3.0

Files: data/songs/*
Copyright: 2020 A Band
License: CC0-1.0
"""

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb")

# (path below usr/share/games/fake, source file, expected outcome: "kept" or the drop reason)
LAYOUT = [
    ("music/brahms.flac", D01_FLAC, "kept"),
    ("music/brahms.mp3", D01_MP3, "kept"),  # the same music, other bytes: kept
    ("music/copy/brahms.flac", D01_FLAC, "a byte-identical copy of a file already kept"),
    ("music/jingle.mp3", CLIP_1S5, f"shorter than {MIN_S:g} s"),
    ("music/broken.mp3", BROKEN, "unreadable audio"),
    ("songs/plum/song.flac", D02_FLAC, "kept"),
    ("songs/plum/guitar.flac", D02_FLAC, "an instrument stem of a song, not the mix"),
    ("sfx/explosion.mp3", CLIP_5S, "in a sfx/ folder"),
    ("music/voice/hello.mp3", CLIP_5S, "in a voice/ folder"),
    ("sounds/wind.mp3", CLIP_5S, "in a sounds/ folder"),
    ("levels/intro.mp3", CLIP_5S, "not in a music folder"),
]


@pytest.fixture(scope="module")
def opus(tmp_path_factory) -> Path:
    """d02 as Ogg Opus (written once: each encode gets a random Ogg stream serial number)."""
    path = tmp_path_factory.mktemp("opus") / "d02.opus"
    audio, _ = sf.read(D02_FLAC)
    sf.write(path, audio, 48000, format="OGG", subtype="OPUS")
    return path


def make_deb(tmp_path: Path, package: str, opus: Path, layout=LAYOUT, copyright_text: str = COPYRIGHT) -> Path:
    """A real .deb holding ``layout`` under usr/share/games/fake, a .pk3 with music, and a copyright."""
    root = tmp_path / f"{package}-tree"
    game = root / "usr/share/games/fake"
    for rel, source, _ in layout:
        (game / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, game / rel)
    (game / "music/theme.mid").write_bytes(b"MThd\x00\x00\x00\x06")  # MIDI: not recorded audio
    (game / "Music.ocg").mkdir()  # Ogg Opus, in a folder named like OpenClonk's "Music.ocg"
    shutil.copyfile(opus, game / "Music.ocg/theme.opus")
    with zipfile.ZipFile(game / "data.pk3", "w") as archive:
        archive.write(CLIP_5S_OTHER, "music/zipped.mp3")
        archive.write(CLIP_5S, "sound/click.mp3")
    doc = root / f"usr/share/doc/{package}"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(copyright_text)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: 1.2-3\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: fake music package\n"
    )
    work = tmp_path / f"{package}-work"
    work.mkdir()
    deb = work / f"{package}_1.2-3_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def extract(deb: Path, out: Path, seen: dict) -> dict:
    record = dc.process_package(deb.name.split("_")[0], str(deb), str(out), seen, MIN_S)
    dc.assign_licences(record)
    return record


# ---------------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("package", [
    "wesnoth-1.16-music", "wesnoth-1.18-music", "wesnoth-music", "nexuiz-music",
    "fretsonfire-songs-muldjord", "wesnoth-1.16-utbs", "nexuiz-data",
])
def test_held_out_packages_are_never_taken(package):
    assert dc.held_out_reason(package)
    assert package not in dc.CANDIDATES
    with pytest.raises(dc.UsageError, match=package):
        dc.parse_args(["--packages", f"asc-music,{package}"])


@pytest.mark.parametrize("package", ["asc-music", "supertuxkart-data", "fretsonfire-songs-sectoid", "0ad-data"])
def test_other_packages_are_not_held_out(package):
    assert dc.held_out_reason(package) is None


@pytest.mark.parametrize("package, path, reason", [
    ("x", "usr/share/games/x/music/a.ogg", None),
    ("x", "usr/share/games/x/Music/a.ogg", None),
    ("x", "usr/share/games/x/data/songs/band/song.ogg", None),
    ("x", "usr/share/games/x/data/songs/band/guitar.ogg", "an instrument stem of a song, not the mix"),
    ("x", "usr/share/games/x/sfx/boom.ogg", "in a sfx/ folder"),
    ("x", "usr/share/games/x/music/ambient/wind.ogg", "in a ambient/ folder"),
    ("x", "usr/share/games/x/sounds/boom.ogg", "in a sounds/ folder"),
    ("x", "usr/share/games/x/sounds/music/theme.ogg", None),
    ("x", "usr/share/games/x/levels/intro.ogg", "not in a music folder"),
    ("x", "usr/share/games/x/data.zip!/audio/music/a.ogg", None),
    ("x", "usr/share/games/x/Music.ocg/a.ogg", None),
    ("supertuxkart-data", "usr/share/games/supertuxkart/data/tracks/cave/theme.ogg", None),
    ("supertuxkart-data", "usr/share/games/supertuxkart/data/sfx/boom.ogg", "in a sfx/ folder"),
    ("freedink-data", "usr/share/games/dink/dink/Sound/lovin.ogg", None),
    ("freedink-data", "usr/share/games/dink/dink/Sound/high2.wav", "in a sound/ folder"),
    ("asc-music", "usr/share/games/asc/a.mp3", None),
    ("x", "usr/share/games/x/snd/frozen-mainzik-1p.ogg", None),
    ("x", "usr/share/games/x/mus3.ogg", None),
    ("x", "usr/share/games/x/sound/music_congratulations.ogg", None),
    ("x", "usr/share/games/x/sfx/music_box.ogg", "in a sfx/ folder"),
    ("x", "usr/share/games/x/sounds/mushroom.ogg", "in a sounds/ folder"),
    ("x", "usr/share/games/x/sounds/themes.ogg", "in a sounds/ folder"),  # a package that ships only music
    ("hyperrogue-music", "usr/share/hyperrogue/music/hr3-caves.ogg", None),
    ("hyperrogue-music", "usr/share/hyperrogue/music/hr-savino-ocean.ogg", "held out: fma_mini validation/test song"),
])
def test_music_filter(package, path, reason):
    assert dc.not_music_reason(package, path) == reason


def test_corpus_paths():
    assert dc.corpus_rel_path("p", "usr/share/games/p/music/a.ogg") == "p/p/music/a.ogg"
    assert dc.corpus_rel_path("p", "usr/share/p/m/a.ogg") == "p/p/m/a.ogg"
    assert dc.corpus_rel_path("0ad-data", "usr/share/games/0ad/public.zip!/audio/music/a.ogg") == \
        "0ad-data/0ad/public_zip/audio/music/a.ogg"


def test_licence_from_dep5_and_freeform():
    assert licence_for("usr/share/games/fake/music/a.ogg", COPYRIGHT) == "CC-BY-SA-3.0"
    assert licence_for("usr/share/games/fake/songs/b/song.ogg", COPYRIGHT) == "CC0-1.0"
    assert licence_for("usr/share/games/fake/other/a.ogg", COPYRIGHT) == "GPL-2+"
    assert licence_for("usr/share/games/fake/data.pk3!/music/a.ogg", COPYRIGHT) == "CC-BY-SA-3.0"
    empty_first_line = "Format: x\n\nFiles: *\nCopyright: me\nLicense:\n CC-BY-4.0\n .\n text\n"
    assert licence_for("a/music/x.ogg", empty_first_line) == "CC-BY-4.0"
    freeform = "This music is licensed under the Creative Commons Attribution-ShareAlike 3.0 licence."
    assert licence_for("a/music/x.ogg", freeform) == "unstructured: CC-BY-SA"
    assert licence_for("a/music/x.ogg", "Redistribution and use in source and binary forms, with or") == \
        "unstructured: BSD"
    assert licence_for("a/music/x.ogg", "all rights reserved") == "unstructured: unknown"


# ---------------------------------------------------------------------- real packages, no network


@needs_dpkg
def test_extracts_only_music_from_a_real_deb(tmp_path, opus):
    deb = make_deb(tmp_path, "fake-music-data", opus)
    out = tmp_path / "corpus"
    seen: dict[str, str] = {}
    record = extract(deb, out, seen)

    assert record["status"] == "done" and record["version"] == "1.2-3"
    kept = {row["original_path"]: row for row in record["rows"]}
    expected = {f"usr/share/games/fake/{rel}" for rel, _, outcome in LAYOUT if outcome == "kept"}
    expected |= {"usr/share/games/fake/data.pk3!/music/zipped.mp3", "usr/share/games/fake/Music.ocg/theme.opus"}
    assert set(kept) == expected
    dropped = {outcome: 1 for _, _, outcome in LAYOUT if outcome != "kept"}
    dropped["in a sound/ folder"] = 1  # the .pk3's sound/click.mp3
    assert record["dropped"] == dropped
    assert record["duplicates"][0]["same_as"] == "fake-music-data/fake/music/brahms.flac"
    assert [u["original_path"] for u in record["unreadable"]] == ["usr/share/games/fake/music/broken.mp3"]
    assert "unreadable: fake-music-data usr/share/games/fake/music/broken.mp3: unreadable audio (" in \
        "\n".join(corpus_manifest.summary_lines([record]))

    for row in record["rows"]:
        path = out / row["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]  # the original bytes
        assert row["sample_rate"] == (48000 if "opus" in row["path"] else 44100) and row["channels"] == 2
        assert row["duration_s"] == pytest.approx(audio_info(path).duration_s, abs=1e-3)
    assert kept["usr/share/games/fake/music/brahms.flac"]["licence"] == "CC-BY-SA-3.0"
    assert kept["usr/share/games/fake/songs/plum/song.flac"]["licence"] == "CC0-1.0"
    assert kept["usr/share/games/fake/data.pk3!/music/zipped.mp3"]["path"] == \
        "fake-music-data/fake/data_pk3/music/zipped.mp3"
    assert kept["usr/share/games/fake/Music.ocg/theme.opus"]["path"] == "fake-music-data/fake/Music.ocg/theme.opus.ogg"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted(row["path"] for row in record["rows"])  # nothing else left behind
    assert sorted(p.name for p in deb.parent.iterdir()) == [deb.name]  # no spooled leftovers


@needs_dpkg
def test_duplicates_across_packages_and_resume(tmp_path, opus):
    out = tmp_path / "corpus"
    first = extract(make_deb(tmp_path, "first-data", opus), out, seen := {})
    second = extract(make_deb(tmp_path, "second-data", opus, layout=LAYOUT[:2]), out, seen)
    assert second["rows"] == []  # every file is already in first-data
    assert {d["same_as"] for d in second["duplicates"]} == {
        "first-data/fake/music/brahms.flac", "first-data/fake/music/brahms.mp3", "first-data/fake/data_pk3/music/zipped.mp3",
        "first-data/fake/Music.ocg/theme.opus.ogg",
    }

    state = out / ".state"
    state.mkdir(parents=True)
    for record in (first, second):
        dc.save_record(str(state), record)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    # Both are marked done: a rerun skips them without apt (the names are not in any archive).
    records = dc.build_corpus(str(out), ["first-data", "second-data"], MIN_S)
    assert [r["package"] for r in records] == ["first-data", "second-data"]
    assert records[0]["rows"] == first["rows"]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def build_fake_corpus(tmp_path: Path, opus: Path) -> tuple[Path, dict, list[dict]]:
    """A corpus folder with its outputs, from one fake package: ``(out, record, manifest rows)``."""
    out = tmp_path / "corpus"
    record = extract(make_deb(tmp_path, "fake-music-data", opus), out, {})
    dc.write_outputs(str(out), [record])
    return out, record, corpus_manifest.read_manifest(str(out / "MANIFEST.csv"))


@needs_dpkg
def test_manifest_and_licences(tmp_path, opus):
    out, record, rows = build_fake_corpus(tmp_path, opus)
    assert list(rows[0]) == list(corpus_manifest.MANIFEST_COLUMNS)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in record["rows"])
    assert {r["package"] for r in rows} == {"fake-music-data"} and {r["version"] for r in rows} == {"1.2-3"}
    licences = (out / "LICENSES.md").read_text()
    assert "| CC-BY-SA-3.0 | 3 |" in licences and "| CC0-1.0 | 1 |" in licences
    assert "wesnoth-*-music" in licences  # the held-out rule is stated with the corpus
    assert (out / "LICENSES" / "fake-music-data.copyright").read_text() == COPYRIGHT


@needs_dpkg
def test_corpus_reader_reads_the_output(tmp_path, opus):
    out, _, rows = build_fake_corpus(tmp_path, opus)
    scan = scan_corpus(out)  # .state/, MANIFEST.csv and LICENSES/ are not audio rows
    assert sorted(Path(t.path).relative_to(out).as_posix() for t in scan.tracks) == [r["path"] for r in rows]
    for row in rows:
        audio, rate = read_audio(out / row["path"])
        assert rate == row["sample_rate"] and audio.shape[0] == row["channels"]
        assert audio.shape[1] / rate == pytest.approx(row["duration_s"], abs=0.05)

    assert dc.verify_corpus(str(out)) == []
    assert dc.main(["--verify", "--out", str(out)]) == 0
    (out / rows[0]["path"]).write_bytes(b"not audio")
    (out / "stray.flac").write_bytes(D01_FLAC.read_bytes())
    problems = dc.verify_corpus(str(out))
    assert len(problems) == 2 and problems[0].startswith("stray.flac: listed by scan_corpus but not in")
    assert problems[1].startswith(rows[0]["path"] + ": ")
    assert dc.main(["--verify", "--out", str(out)]) == 1


def test_manifest_rejects_unknown_columns(tmp_path):
    row = {column: "1" for column in corpus_manifest.MANIFEST_COLUMNS}
    with pytest.raises(ValueError):
        corpus_manifest.write_manifest([{**row, "genre": "rock"}], str(tmp_path / "MANIFEST.csv"))


# ------------------------------------------------------------------------------ argument errors


@pytest.mark.parametrize("argv, flag", [
    (["--min-duration-s", "0"], "--min-duration-s"),
    (["--min-duration-s", "-3"], "--min-duration-s"),
    (["--min-duration-s", "nan"], "--min-duration-s"),
    (["--min-duration-s", "abc"], "--min-duration-s"),
    (["--packages", "Not_A_Package"], "--packages"),
    (["--packages", "nexuiz-music"], "--packages"),
    (["--bogus"], "--bogus"),
])
def test_bad_arguments_exit_2_with_one_line(argv, flag, capsys):
    assert dc.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and err.startswith("debian_corpus: error:")


def test_out_that_is_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert dc.main(["--out", str(target)]) == 2
    assert "--out" in capsys.readouterr().err


def test_verify_without_manifest_exits_2(tmp_path, capsys):
    assert dc.main(["--verify", "--out", str(tmp_path)]) == 2
    assert "--verify: no MANIFEST.csv" in capsys.readouterr().err


def test_list_prints_candidates_only(capsys):
    assert dc.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "supertuxkart-data" in lines and not any(dc.held_out_reason(line) for line in lines)
