"""automaster.storage on local paths and file:// URIs."""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from automaster import storage


@pytest.fixture(params=["path", "uri"])
def base(request, tmp_path):
    """The same temporary folder as a plain path and as a file:// URI."""
    return str(tmp_path) if request.param == "path" else tmp_path.as_uri()


def test_is_local_and_local_path(tmp_path):
    assert storage.is_local("data/x.wav")
    assert storage.is_local("file:///tmp/x.wav")
    assert storage.is_local("C:\\music\\x.wav")  # a drive letter is not a scheme
    assert not storage.is_local("s3://bucket/x.wav")
    assert not storage.is_local("gs://bucket/x.wav")
    assert storage.local_path("file:///tmp/a%20b.wav") == "/tmp/a b.wav"
    assert storage.local_path("rel/x.wav") == os.path.abspath("rel/x.wav")
    with pytest.raises(ValueError, match="not a local path"):
        storage.local_path("s3://bucket/x.wav")


def test_resolve(tmp_path):
    fs, path = storage.resolve(tmp_path.as_uri() + "/a.wav")
    assert isinstance(fs, pafs.LocalFileSystem)
    assert path == str(tmp_path / "a.wav")
    fs, path = storage.resolve(str(tmp_path / "b"))
    assert path == str(tmp_path / "b")


def test_join():
    assert storage.join("s3://bucket/out", "a", "b.wav") == "s3://bucket/out/a/b.wav"
    assert storage.join("s3://bucket/out/", "/a") == "s3://bucket/out/a"
    assert storage.join("out", "a", "b.wav") == os.path.join("out", "a", "b.wav")


def test_write_read_exists_list(base):
    target = storage.join(base, "sub", "deeper", "x.bin")
    assert not storage.exists(target)
    storage.write_bytes_atomic(target, b"hello")  # creates the parents
    assert storage.exists(target) and storage.is_file(target)
    assert storage.is_dir(storage.join(base, "sub"))
    assert storage.read_bytes(target) == b"hello"
    storage.write_bytes_atomic(target, b"replaced")
    assert storage.read_bytes(target) == b"replaced"
    storage.makedirs(storage.join(base, "empty", "folder"))
    storage.makedirs(storage.join(base, "empty", "folder"))  # idempotent
    storage.write_bytes_atomic(storage.join(base, "top.txt"), b"")

    files = storage.list_files(base)
    assert files == sorted(files)
    assert files == [storage.join(base, "sub", "deeper", "x.bin"), storage.join(base, "top.txt")]
    assert storage.list_files(base, recursive=False) == [storage.join(base, "top.txt")]
    with storage.open_input_file(target) as f:
        f.seek(3)
        assert f.read() == b"laced"


def test_atomic_write_leaves_no_temp_file_and_old_content_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    storage.write_bytes_atomic(str(target), b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_local_path(str(target)) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path)  # same folder: rename is atomic
            assert os.path.basename(tmp).startswith(".")  # hidden from listings meanwhile
            with open(tmp, "wb") as f:
                f.write(b"half a fi")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_list_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        storage.list_files(str(tmp_path / "nope"))
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(FileNotFoundError):
        storage.list_files(str(tmp_path / "f"))


def test_atomic_write_of_a_name_near_the_file_system_limit(tmp_path):
    """A 250-byte name (a user's long title): the hidden temporary name must still fit in 255."""
    for name in ("x" * 246 + ".wav", "é" * 123 + ".wav"):  # 250 bytes each
        storage.write_bytes_atomic(tmp_path / name, b"data")
        assert (tmp_path / name).read_bytes() == b"data"
    assert sorted(os.listdir(tmp_path)) == sorted(["x" * 246 + ".wav", "é" * 123 + ".wav"])


def test_display_name_keeps_a_table_row_on_one_line():
    shown = storage.display_name("new\nline\t\x1b[2J\u202e é音楽.wav")
    assert shown == "new\\nline\\t\\x1b[2J\\u202e é音楽.wav" and shown.isprintable()
    assert storage.display_name("plain name (live).wav") == "plain name (live).wav"

