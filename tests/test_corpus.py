"""automaster.corpus: the FMA layout (fixture and fma_mini) and any folder of audio."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from automaster.corpus import (
    CorpusError,
    Track,
    folder_split,
    folder_track_id,
    list_corpus,
    read_fma_tracks,
    scan_corpus,
)
from tests.audio_fixtures import ODD_NAMES, make_bad_inputs

DATA = Path(__file__).parent / "data"
FMA_FIXTURE = DATA / "fma"
FMA_MINI = Path("/work/shared/data/fma_mini")
SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9_]*-[0-9a-f]{8}$|^track-[0-9a-f]{8}$")


# -------------------------------------------------------------------------------- FMA fixture


def test_fma_fixture_rows():
    scan = scan_corpus(FMA_FIXTURE)
    assert scan.kind == "fma" and scan.root == str(FMA_FIXTURE / "fma_small")
    rows = {t.track_id: t for t in scan.tracks}
    assert list(rows) == ["000002", "000003", "000005", "000010", "001666", "001777", "001888"]
    assert rows["000002"] == Track(
        "000002", str(FMA_FIXTURE / "fma_small" / "000" / "000002.mp3"), "training", "Classical", "small"
    )
    assert rows["000005"].split == "validation"
    assert rows["000010"].split == "test" and rows["000010"].genre == "unknown"  # empty genre_top
    assert rows["001666"].split == "training"  # broken file: still a row, decoding fails later
    assert rows["001777"].genre == "Instrumental"
    assert scan.missing == [] and scan.unlisted == []  # 002000/003000 are medium/large rows
    assert all(Path(t.path).is_file() for t in scan.tracks)


def test_fma_subset_folder_given_directly():
    assert list_corpus(FMA_FIXTURE / "fma_small") == list_corpus(FMA_FIXTURE)
    assert list_corpus(FMA_FIXTURE.as_uri()) == list_corpus(FMA_FIXTURE)


def test_fma_limit_takes_first_ids():
    assert [t.track_id for t in list_corpus(FMA_FIXTURE, limit=3)] == ["000002", "000003", "000005"]
    with pytest.raises(ValueError):
        list_corpus(FMA_FIXTURE, limit=-1)


def test_fma_missing_and_unlisted_files(tmp_path):
    root = tmp_path / "fma"
    shutil.copytree(FMA_FIXTURE, root)
    (root / "fma_small" / "000" / "000003.mp3").unlink()  # a listed track without its file
    extra = root / "fma_small" / "123" / "123456.mp3"  # a file without a metadata row
    extra.parent.mkdir()
    shutil.copyfile(root / "fma_small" / "000" / "000002.mp3", extra)
    (root / "fma_small" / "checksums").write_text("not audio\n")
    (root / "fma_small" / "000" / "._000002.mp3").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble

    scan = scan_corpus(root)
    ids = [t.track_id for t in scan.tracks]
    assert "000003" not in ids and "123456" in ids and len(ids) == 7
    assert scan.missing == [
        ("000003", str(root / "fma_small" / "000" / "000003.mp3"), "listed in tracks.csv but no audio file")
    ]
    assert scan.unlisted == ["123456"]
    row = next(t for t in scan.tracks if t.track_id == "123456")
    assert (row.genre, row.subset, row.split) == ("unknown", "", folder_split("123/123456.mp3"))


def test_fma_medium_includes_small_rows(tmp_path):
    root = tmp_path / "fma"
    shutil.copytree(FMA_FIXTURE / "fma_metadata", root / "fma_metadata")
    shutil.copytree(FMA_FIXTURE / "fma_small", root / "fma_medium")
    scan = scan_corpus(root)
    # 002000 is subset 'medium': expected in fma_medium, and has no file; 003000 is 'large'.
    assert [m[0] for m in scan.missing] == ["002000"]
    assert len(scan.tracks) == 7


def test_fma_errors(tmp_path):
    root = tmp_path / "fma"
    shutil.copytree(FMA_FIXTURE / "fma_metadata", root / "fma_metadata")
    with pytest.raises(CorpusError, match="no audio folder"):
        scan_corpus(root)
    (root / "fma_small").mkdir()
    with pytest.raises(CorpusError, match=r"no audio files under .*fma_small.*\(7 tracks of fma_small"):
        scan_corpus(root)
    (root / "fma_large").mkdir()
    with pytest.raises(CorpusError, match="several FMA subsets"):
        scan_corpus(root)
    bad = tmp_path / "bad" / "fma_metadata"
    bad.mkdir(parents=True)
    (bad / "tracks.csv").write_text("track_id,genre\n1,Rock\n")
    (bad.parent / "fma_small").mkdir()
    with pytest.raises(CorpusError, match="not FMA's tracks.csv"):
        scan_corpus(bad.parent)


def test_read_fma_tracks_matches_full_pandas_read():
    fast = read_fma_tracks(str(FMA_FIXTURE / "fma_metadata" / "tracks.csv"))
    full = pd.read_csv(FMA_FIXTURE / "fma_metadata" / "tracks.csv", index_col=0, header=[0, 1])
    assert list(fast.index) == [f"{i:06d}" for i in full.index]
    assert list(fast["split"]) == list(full["set", "split"])
    assert list(fast["subset"]) == list(full["set", "subset"])
    assert fast["genre"].isna().tolist() == full["track", "genre_top"].isna().tolist()


# ---------------------------------------------------------------------------------- fma_mini


@pytest.mark.skipif(not FMA_MINI.exists(), reason="shared fma_mini not available")
def test_fma_mini():
    scan = scan_corpus(FMA_MINI)
    assert scan.kind == "fma" and len(scan.tracks) == 97 and scan.missing == []
    assert list_corpus(FMA_MINI / "fma_small") == scan.tracks
    rows = {t.track_id: t for t in scan.tracks}
    assert {"098565", "099134"} <= set(rows)  # the broken ids are rows
    assert rows["099134"].path.endswith("fma_small/099/099134.mp3")
    assert Counter(t.split for t in scan.tracks) == {"training": 78, "validation": 10, "test": 9}
    good = [t for t in scan.tracks if t.track_id not in ("098565", "099134")]
    genres = Counter((t.genre, t.split) for t in good)
    # README's table: Classical 14/4/4, Electronic 28/2/2, Instrumental 26/4/3, Rock 8/0/0.
    assert genres == {
        ("Classical", "training"): 14, ("Classical", "validation"): 4, ("Classical", "test"): 4,
        ("Electronic", "training"): 28, ("Electronic", "validation"): 2, ("Electronic", "test"): 2,
        ("Instrumental", "training"): 26, ("Instrumental", "validation"): 4, ("Instrumental", "test"): 3,
        ("Rock", "training"): 8,
    }
    assert {t.subset for t in scan.tracks} == {"small"}
    assert all(re.fullmatch(r"\d{6}", t.track_id) for t in scan.tracks)


# ---------------------------------------------------------------------------- any folder


def test_folder_corpus_of_committed_music():
    tracks = list_corpus(DATA / "music")
    assert len(tracks) == 3  # two FLACs and an MP3
    assert all(t.genre == "unknown" and t.subset == "" for t in tracks)
    ids = [t.track_id for t in tracks]
    assert ids == sorted(ids) and len(set(ids)) == 3
    # the same stem in two formats still gives two ids
    assert sum(i.startswith("d01_librosa_brahms_hungarian_dance_5-") for i in ids) == 2


def test_folder_corpus_odd_names_ids_unique_safe_stable(tmp_path):
    root = tmp_path / "my corpus"
    paths = make_bad_inputs(root / "Rock")
    (root / "Jazz" / "deep" / "dir").mkdir(parents=True)
    shutil.copyfile(paths["one_second"], root / "Jazz" / "deep" / "dir" / "one_second.wav")
    shutil.copyfile(paths["one_second"], root / "Jazz" / "One Second.WAV")
    (root / ".hidden").mkdir()
    shutil.copyfile(paths["one_second"], root / ".hidden" / "x.wav")
    shutil.copyfile(paths["one_second"], root / "Rock" / ".x.wav.tmp.wav")
    (root / "Rock" / "readme.txt").write_text("not audio")

    scan = scan_corpus(root, genre_from_folder=True)
    assert scan.kind == "folder" and scan.missing == []
    files = {Path(t.path).name for t in scan.tracks}
    assert set(ODD_NAMES.values()) <= files and "x.wav" not in files and "readme.txt" not in files
    assert ".x.wav.tmp.wav" not in files
    # every audio file in the zoo is a row (unreadable ones too: decoding happens later)
    assert len(scan.tracks) == len(paths) + 2
    ids = [t.track_id for t in scan.tracks]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    for tid in ids:
        assert SAFE_ID.match(tid), tid
        assert len(tid) <= 48 + 9
    assert {t.genre for t in scan.tracks} == {"Rock", "Jazz"}
    assert list_corpus(root, genre_from_folder=True) == scan.tracks  # stable across calls
    by_name = {Path(t.path).name: t for t in scan.tracks}
    assert by_name["-rf.wav"].track_id == folder_track_id("Rock/-rf.wav")
    assert by_name["Ærø – 音楽 é.flac"].track_id.startswith("rock_aero_e-")
    assert by_name["one_second.wav"].genre == "Rock"  # Rock/one_second.wav, not the Jazz copy


def test_folder_ids_and_splits_are_fixed_functions_of_the_relative_path(tmp_path):
    # Fixed expectations: a change in the id or split rule would silently reshuffle datasets.
    rel = "Rock/My Song (live).mp3"
    assert folder_track_id(rel) == "rock_my_song_live-" + _sha8(rel)
    assert folder_track_id("音楽.wav") == "track-" + _sha8("音楽.wav")
    assert folder_track_id("a" * 100 + ".wav").startswith("a" * 48 + "-")
    # NFD (macOS) and NFC (Linux) spellings of a name are the same track
    assert folder_track_id("Cafe\u0301.wav") == folder_track_id("Caf\u00e9.wav")
    assert folder_track_id("a/b.wav") != folder_track_id("a_b.wav")  # same slug, different id
    rels = [f"{g}/{i:05d}.mp3" for g in ("x", "y") for i in range(2000)]
    shares = Counter(folder_split(r) for r in rels)
    assert set(shares) == {"training", "validation", "test"}
    assert abs(shares["training"] / 4000 - 0.8) < 0.03
    assert abs(shares["validation"] / 4000 - 0.1) < 0.02
    assert [folder_split(r) for r in rels[:50]] == [folder_split(r) for r in rels[:50]]


def test_folder_split_does_not_depend_on_other_files(tmp_path):
    root = tmp_path / "c"
    make_bad_inputs(root)
    before = {Path(t.path).name: (t.track_id, t.split) for t in list_corpus(root)}
    (root / "one_second.wav").unlink()
    (root / "new.wav").write_bytes((root / "silence.wav").read_bytes())
    after = {Path(t.path).name: (t.track_id, t.split) for t in list_corpus(root)}
    assert all(after[name] == before[name] for name in after if name != "new.wav")


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(CorpusError, match=re.escape(repr(str(tmp_path / "nope")))):
        list_corpus(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    (tmp_path / "empty" / ".hidden.wav").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"no audio files .* under .*empty"):
        list_corpus(tmp_path / "empty")
    (tmp_path / "file.wav").write_bytes(b"")
    with pytest.raises(CorpusError, match="is a file, not a folder"):
        list_corpus(tmp_path / "file.wav")
    assert issubclass(CorpusError, ValueError)


def _sha8(rel: str) -> str:
    import hashlib

    return hashlib.sha1(rel.encode()).hexdigest()[:8]
