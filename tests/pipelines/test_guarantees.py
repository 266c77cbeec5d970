"""Issue 22, one reproduction per problem, through the batch skeleton every job shares (real
MLflow stores, in-process runs): outputs that match their inputs, the user's files never
touched, a broken MLflow store or output path in one line, a full disk named."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from automaster import storage
from automaster.config import ConfigError
from automaster.pipelines import tracking
from automaster.pipelines.batch import JobSpec, RunOptions, format_summary, run_job
from tests.pipelines.batch_helpers import UpperProcessor, make_items

REPO = Path(__file__).resolve().parents[2]


def _spec(out: Path, uri: str, inputs: Path | list[str] | None = None, **kw) -> JobSpec:
    paths = {"--out": str(out)}
    if inputs is not None:
        paths["--input"] = [str(p) for p in inputs] if isinstance(inputs, list) else str(inputs)
    return JobSpec(job="upper", out=str(out), settings={"suffix": ""}, processor=UpperProcessor,
                   processor_kwargs={}, experiment="test-guarantees", tracking_uri=uri, paths=paths, **kw)


def _run(out, uri, items, inputs=None, **options):
    return run_job(_spec(out, uri, inputs), items, [], RunOptions(progress=False, ray=False, **options))


@pytest.fixture()
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# 1. -------------------------------------------------------------------- fingerprints


def test_an_input_edited_in_place_is_redone_and_said_so(tmp_path, uri):
    items = make_items(tmp_path / "in", {"a": "alpha", "b": "beta"})
    first = _run(tmp_path / "out", uri, items, tmp_path / "in")
    record = json.loads(next((tmp_path / "out/.automaster/items").glob("*.json")).read_text())
    fp = record["inputs"][record["path"]]
    assert set(fp) == {"size", "mtime_ns", "blake2b"} and fp["size"] == os.path.getsize(record["path"])
    manifest = json.loads((tmp_path / "out/.automaster/manifest.json").read_text())
    assert manifest["inputs"] == [os.path.realpath(tmp_path / "in")]
    (tmp_path / "in/a.txt").write_text("apple!")  # same name, new content
    os.utime(tmp_path / "in/b.txt")  # touched, same bytes: still the same input
    again = _run(tmp_path / "out", uri, items, tmp_path / "in")
    assert (first["ok"], again["ok"], again["skipped"], again["redone"]) == (2, 1, 1, 1)
    assert again["redone_files"] == ["a.txt"]
    assert (tmp_path / "out/upper/a.txt").read_text() == "APPLE!"
    assert "redone: 1 changed inputs" in format_summary("upper", again)
    assert _run(tmp_path / "out", uri, items, tmp_path / "in")["skipped"] == 2  # now current


def test_a_redone_input_that_now_fails_leaves_no_stale_output(tmp_path, uri):
    items = make_items(tmp_path / "in", {"a": "alpha"})
    _run(tmp_path / "out", uri, items, tmp_path / "in")
    (tmp_path / "in/a.txt").write_text("fail")
    again = _run(tmp_path / "out", uri, items, tmp_path / "in")
    assert (again["failed"], again["redone"]) == (1, 1)
    assert not (tmp_path / "out/upper/a.txt").exists()  # the old output disowned by its input is gone


def test_another_input_root_into_the_same_out_is_refused_unless_overwrite(tmp_path, uri):
    one = make_items(tmp_path / "one", {"a": "alpha"})
    two = make_items(tmp_path / "two", {"a": "other"})  # the same names
    _run(tmp_path / "out", uri, one, tmp_path / "one")
    with pytest.raises(ConfigError, match="holds the outputs of other inputs") as refused:
        _run(tmp_path / "out", uri, two, tmp_path / "two")
    assert "\n" not in str(refused.value) and str(tmp_path / "two") in str(refused.value)
    assert (tmp_path / "out/upper/a.txt").read_text() == "ALPHA"
    redo = _run(tmp_path / "out", uri, two, tmp_path / "two", overwrite=True)
    assert redo["ok"] == 1 and (tmp_path / "out/upper/a.txt").read_text() == "OTHER"
    # several roots (repeated --input) in any order are the same inputs
    both = [str(tmp_path / "two"), str(tmp_path / "one")]
    _run(tmp_path / "out2", uri, one, both)
    assert _run(tmp_path / "out2", uri, one, both[::-1])["skipped"] == 1


def test_a_reference_file_is_in_the_manifest_by_its_hash(tmp_path, uri):
    items = make_items(tmp_path / "in", {"a": "alpha"})
    ref = tmp_path / "ref.wav"
    ref.write_bytes(b"reference one")
    spec = _spec(tmp_path / "out", uri, tmp_path / "in")
    spec.paths["--reference"] = str(ref)
    run_job(spec, items, [], RunOptions(progress=False, ray=False))
    manifest = json.loads((tmp_path / "out/.automaster/manifest.json").read_text())
    assert manifest["files_sha256"]["reference"] == storage.hashlib.sha256(b"reference one").hexdigest()
    ref.write_bytes(b"reference two")
    with pytest.raises(ConfigError, match="reference SHA-256"):
        run_job(spec, items, [], RunOptions(progress=False, ray=False))


# 2. -------------------------------------------------------------------- the user's files


def test_out_equal_to_input_never_removes_the_users_tmp_files(tmp_path, uri):
    folder = tmp_path / "music"
    items = make_items(folder, {"a": "alpha"})
    (folder / "sub").mkdir()
    users = [folder / ".draft.tmp", folder / "sub/.session.tmp", folder / ".x.1234.tmp"]
    for p in users:
        p.write_text("the user's")
    ours = [folder / ".automaster-tmp-summary.json.k3j2.tmp", folder / ".automaster/.automaster-tmp-manifest.json.q.tmp"]
    ours[1].parent.mkdir()
    for p in ours:
        p.write_text("a killed run's")
    summary = _run(folder, uri, items, folder)
    assert all(p.read_text() == "the user's" for p in users)
    assert not any(p.exists() for p in ours) and summary["stale_files_removed"] == 2


# 3. -------------------------------------------------------------------- MLflow cannot sink a job


@contextlib.contextmanager
def _locked(db: Path):
    """An exclusive SQLite lock on ``db``, as another process writing would hold."""
    con = sqlite3.connect(db, timeout=0, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN EXCLUSIVE")
    try:
        yield con
    finally:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        con.close()


@pytest.fixture()
def quick_retries(monkeypatch):
    monkeypatch.setattr(tracking, "RETRY_DELAYS_S", (0.2,))
    monkeypatch.setattr(tracking, "END_RETRY_DELAYS_S", (0.5, 1.0, 2.0, 4.0, 8.0))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def _store(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    mlflow.MlflowClient(uri).search_experiments()  # created, with its tables
    return db, uri


def test_a_corrupt_store_keeps_the_outputs_and_says_why_in_one_line(tmp_path, quick_retries, caplog):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a database " * 100)
    items = make_items(tmp_path / "in", {"a": "alpha"})
    with caplog.at_level(logging.INFO):
        summary = _run(tmp_path / "out", f"sqlite:///{db}", items)
    # The summary's line is the console's one word on it (before: a warning said it first); the log has it too.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "MLflow" in r.getMessage()] == []
    assert "the job goes on without recording: file is not a database" in Path(summary["log_file"]).read_text()
    assert summary["ok"] == 1 and (tmp_path / "out/upper/a.txt").read_text() == "ALPHA"
    assert "file is not a database" in summary["mlflow_problem"] and "\n" not in summary["mlflow_problem"]
    assert json.loads((tmp_path / "out/summary.json").read_text())["mlflow_problem"] == summary["mlflow_problem"]
    lines = format_summary("upper", summary).splitlines()
    assert [ln.strip() for ln in lines if "MLflow" in ln] == [f"not recorded in MLflow: {summary['mlflow_problem']}"]


def test_an_unreachable_store_keeps_the_outputs(tmp_path, quick_retries):
    items = make_items(tmp_path / "in", {"a": "alpha"})
    summary = _run(tmp_path / "out", "http://127.0.0.1:9", items)
    assert summary["ok"] == 1 and summary["mlflow_problem"] and "127.0.0.1:9" in summary["mlflow_problem"]


@pytest.mark.slow  # MLflow waits 20 s on a locked SQLite store, twice
def test_a_store_locked_before_the_run_is_retried_then_the_job_runs(tmp_path, quick_retries):
    db, uri = _store(tmp_path)
    items = make_items(tmp_path / "in", {"a": "alpha"})
    with _locked(db):
        summary = _run(tmp_path / "out", uri, items)
    assert summary["ok"] == 1 and "database is locked" in summary["mlflow_problem"]
    log = Path(summary["log_file"]).read_text()
    assert "MLflow store locked (start the run); trying again in 0.2 s" in log
    assert mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()]) == []  # no run was started


class LockingProcessor(UpperProcessor):
    """Takes the store's lock while processing (``LockingProcessor.db``), as another process
    writing to the store in the middle of a job would."""

    db: Path | None = None
    held: list = []

    def process(self, item, staging):
        if not self.held:
            con = sqlite3.connect(self.db, timeout=0, isolation_level=None, check_same_thread=False)
            con.execute("BEGIN EXCLUSIVE")
            self.held.append(con)
        return super().process(item, staging)


@pytest.mark.slow  # MLflow waits 20 s on a locked SQLite store, twice
def test_a_lock_taken_mid_run_keeps_the_outputs_and_leaves_no_run_running(tmp_path, quick_retries):
    db, uri = _store(tmp_path)
    items = make_items(tmp_path / "in", {"a": "alpha", "b": "beta"})
    LockingProcessor.db, LockingProcessor.held = db, []
    spec = _spec(tmp_path / "out", uri)
    spec.processor = LockingProcessor
    log_file = tmp_path / "out/logs/upper.log"

    def release_once_given_up() -> None:  # the lock's holder lets go after the job gave up recording
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if log_file.exists() and "the job goes on without recording" in log_file.read_text():
                break
            time.sleep(0.1)
        LockingProcessor.held[0].execute("ROLLBACK")

    releaser = threading.Thread(target=release_once_given_up)
    releaser.start()
    try:
        summary = run_job(spec, items, [], RunOptions(progress=False, ray=False))
    finally:
        releaser.join()
        LockingProcessor.held[0].close()
    assert summary["ok"] == 2 and (tmp_path / "out/upper/b.txt").read_text() == "BETA"
    assert "database is locked" in summary["mlflow_problem"]
    run = mlflow.MlflowClient(uri).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FAILED"  # ended, not left RUNNING


# 4. -------------------------------------------------------------------- paths and disks


@contextlib.contextmanager
def _mount_tmpfs(where: Path, options: str):
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.contextmanager
def read_only_folder(where: Path):
    """A folder this process cannot write into: chmod for a user, a read-only tmpfs for root."""
    if os.geteuid() != 0:
        where.mkdir(parents=True)
        where.chmod(0o555)
        try:
            yield where
        finally:
            where.chmod(0o755)
    else:
        with _mount_tmpfs(where, "ro,size=1m"):
            yield where


def test_a_read_only_or_looping_out_is_refused_in_one_line(tmp_path, uri):
    items = make_items(tmp_path / "in", {"a": "alpha"})
    with read_only_folder(tmp_path / "ro") as ro:
        with pytest.raises(ConfigError) as refused:
            _run(ro, uri, items)
        assert "cannot be written into" in str(refused.value) and "\n" not in str(refused.value)
        with pytest.raises(ConfigError, match="cannot be created"):
            _run(ro / "new", uri, items)
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    with pytest.raises(ConfigError, match="--out .*loop_a: a symbolic link loop"):
        _run(tmp_path / "loop_a", uri, items)
    with pytest.raises(ConfigError, match="--input .*loop_a: a symbolic link loop"):
        _run(tmp_path / "out", uri, items, tmp_path / "loop_a")
    assert not Path(uri[len("sqlite:///"):]).exists()  # refused before MLflow (and Ray) started


class BigProcessor(UpperProcessor):
    """Writes 300 kB per item: a small disk fills after a few."""

    def process(self, item, staging):
        Path(staging.path(f"big/{item['key']}.bin")).write_bytes(os.urandom(300_000))
        return super().process(item, staging)


def test_a_full_disk_is_named_stops_the_job_and_leaves_no_partial_output(tmp_path, uri):
    items = make_items(tmp_path / "in", {f"t{i}": f"text {i}" for i in range(8)})
    with _mount_tmpfs(tmp_path / "small", "size=1m") as small:
        spec = _spec(small / "out", uri)
        spec.processor = BigProcessor
        with pytest.raises(storage.DiskFullError, match="no space left on device") as stopped:
            run_job(spec, items, [], RunOptions(progress=False, ray=False))
        assert stopped.value.errno == errno.ENOSPC
        done = sorted(p.stem for p in (small / "out/big").glob("*.bin"))
        assert 1 <= len(done) < 8  # it stopped: not every file failed in turn
        assert sorted(p.stem for p in (small / "out/upper").glob("*.txt")) == done  # complete or absent
        assert len(list((small / "out/.automaster/items").glob("*.json"))) == len(done)
        assert not [p for p in (small / "out").rglob("*") if p.name.startswith(".automaster-tmp-")]
        assert not list((small / "out/.automaster").glob("staging/**/*.bin"))
        runs = mlflow.MlflowClient(uri).search_runs([mlflow.get_experiment_by_name("test-guarantees").experiment_id])
        assert runs[0].info.status == "FAILED"


# 7. -------------------------------------------------------------------- smaller


class PlottingProcessor(UpperProcessor):
    """Draws a title its font lacks glyphs for (a file name in Chinese), as a report picture would."""

    def process(self, item, staging):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.set_title("\u66f2\u540d.wav")
        fig.savefig(staging.path(f"png/{item['key']}.png"))
        plt.close(fig)
        return super().process(item, staging)


def test_a_missing_glyph_warning_goes_to_the_log_not_the_console(tmp_path, uri):
    """In a process of its own, as a command runs (pytest records warnings itself)."""
    items = make_items(tmp_path / "in", {"a": "alpha"})
    script = (
        "import json, sys\n"
        "from automaster.pipelines.batch import RunOptions, run_job\n"
        "from tests.pipelines.test_guarantees import PlottingProcessor, _spec\n"
        f"spec = _spec({str(tmp_path / 'out')!r}, {uri!r})\n"
        "spec.processor = PlottingProcessor\n"
        f"print(run_job(spec, json.loads({json.dumps(items)!r}), [], RunOptions(progress=False, ray=False))['ok'])\n"
    )
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "1", res.stderr
    assert "Glyph" not in res.stderr
    assert "missing from font" in (tmp_path / "out/logs/upper.log").read_text()
