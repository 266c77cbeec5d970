"""The batch skeleton, once for every job: per-item failures, resume, complete-or-absent items,
settings manifest, lock, stale MLflow runs, file modes; in-process, and on real Ray for the
guarantees only workers can break (a poison item, a hung item)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from automaster.config import BatchConfig, ConfigError
from automaster.pipelines.batch import JobSpec, RunOptions, run_job
from automaster.pipelines.outfolder import OutputFolder
from tests.pipelines.batch_helpers import UpperProcessor, make_items

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One MLflow store for the module: creating a SQLite store costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _spec(out: Path, uri: str, suffix: str = "") -> JobSpec:
    return JobSpec(job="upper", out=str(out), settings={"suffix": suffix}, processor=UpperProcessor,
                   processor_kwargs={"suffix": suffix}, experiment="test-batch", tracking_uri=uri)


def _run(out, uri, items, suffix="", **options):
    return run_job(_spec(out, uri, suffix), items, [{"path": "x.bin", "reason": "not text"}],
                   RunOptions(progress=False, **options))


def test_failures_recorded_and_every_input_accounted_for(tmp_path, tracking_uri):
    items = make_items(tmp_path / "in", {"a": "alpha", "b": "fail", "c": "gamma"})
    summary = _run(tmp_path / "out", tracking_uri, items)
    assert (summary["ok"], summary["failed"], summary["skipped"], summary["passed_over"], summary["total"]) == (2, 1, 0, 1, 4)
    assert summary["mode"] == "in-process"
    assert summary["failures"] == [{"key": "b", "rel_path": "b.txt", "path": items[1]["path"], "reason": f"{items[1]['path']}: says fail"}]
    assert summary["passed_over_files"] == [{"path": "x.bin", "reason": "not text"}]
    assert (tmp_path / "out/upper/a.txt").read_text() == "ALPHA"
    assert not (tmp_path / "out/upper/b.txt").exists() and not (tmp_path / "out/length/b.txt").exists()
    on_disk = json.loads((tmp_path / "out/summary.json").read_text())
    assert {f["rel_path"]: f["status"] for f in on_disk["files"]} == {"a.txt": "ok", "b.txt": "error", "c.txt": "ok"}
    run = mlflow.MlflowClient(tracking_uri).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["items_failed"] == 1


def test_resume_keeps_figures_retries_failures_and_refuses_other_settings(tmp_path, tracking_uri):
    items = make_items(tmp_path / "in", {"a": "alpha", "b": "fail"})
    _run(tmp_path / "out", tracking_uri, items)
    stamp = (tmp_path / "out/upper/a.txt").stat().st_mtime_ns
    again = _run(tmp_path / "out", tracking_uri, items)
    assert (again["ok"], again["skipped"], again["failed"]) == (0, 1, 1)
    skipped = next(f for f in again["files"] if f["status"] == "skipped")
    assert skipped["n_chars"] == 5 and skipped["report"] == {"first": "a"}  # figures kept from the record
    assert (tmp_path / "out/upper/a.txt").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match=r"other settings \(suffix:  -> !\)"):
        _run(tmp_path / "out", tracking_uri, items, suffix="!")
    redo = _run(tmp_path / "out", tracking_uri, items, suffix="!", overwrite=True)
    assert redo["ok"] == 1 and (tmp_path / "out/upper/a.txt").read_text() == "ALPHA!"
    resumed = _run(tmp_path / "out", tracking_uri, items, suffix="!")  # the new settings now resume
    assert resumed["skipped"] == 1


def test_second_run_into_a_locked_folder_is_refused(tmp_path, tracking_uri):
    items = make_items(tmp_path / "in", {"a": "alpha"})
    holder = OutputFolder(str(tmp_path / "out"))
    holder.acquire_lock("upper")
    try:
        with pytest.raises(ConfigError, match="another run is writing into this folder"):
            _run(tmp_path / "out", tracking_uri, items)
    finally:
        holder.release_lock()
    assert _run(tmp_path / "out", tracking_uri, items)["ok"] == 1


def test_killed_between_outputs_leaves_nothing_trusted_and_the_next_run_sweeps(tmp_path, tracking_uri):
    items = make_items(tmp_path / "in", {"a": "alpha", "b": "die-after-first"})
    script = textwrap.dedent(f"""
        from automaster.pipelines.batch import RunOptions, run_job
        from tests.pipelines.test_batch import _spec
        import json
        items = json.loads({json.dumps(items)!r})
        run_job(_spec({str(tmp_path / 'out')!r}, {tracking_uri!r}), items, [], RunOptions(progress=False))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 4  # the process died inside item b
    out = tmp_path / "out"
    assert (out / "upper/a.txt").exists() and not (out / "upper/b.txt").exists()  # b's first output never published
    assert list((out / ".automaster/staging").rglob("b.txt"))  # ...it is still staged
    client = mlflow.MlflowClient(tracking_uri)
    killed = [r for r in client.search_runs([client.get_experiment_by_name("test-batch").experiment_id])
              if r.info.status == "RUNNING"]
    assert len(killed) == 1
    (tmp_path / "in/b.txt").write_text("beta")
    summary = _run(out, tracking_uri, items)
    assert (summary["ok"], summary["skipped"], summary["stale_files_removed"]) == (1, 1, 1)
    assert not (out / ".automaster/staging").exists() or not list((out / ".automaster/staging").rglob("*.txt"))
    assert (out / "length/b.txt").read_text() == "4"
    assert client.get_run(killed[0].info.run_id).info.status == "KILLED"  # the killed job's run, ended


def test_outputs_get_the_umask_mode(tmp_path, tracking_uri):
    items = make_items(tmp_path / "in", {"a": "alpha"})
    old = os.umask(0o022)
    try:
        _run(tmp_path / "out", tracking_uri, items)
    finally:
        os.umask(old)
    for name in ("upper/a.txt", "summary.json"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o666 & ~old, name


def test_ray_workers_poison_and_hung_items_fail_with_reasons(ray_local, tmp_path, tracking_uri):
    items = make_items(tmp_path / "in", {"a": "alpha", "crash": "crash", "hang": "hang", "d": "delta"})
    options = RunOptions(progress=False, ray=True, workers=2, batch=BatchConfig(item_timeout_base_s=8.0, max_attempts=2))
    summary = run_job(_spec(tmp_path / "out", tracking_uri), items, [], options)
    reasons = {f["rel_path"]: f["reason"] for f in summary["failures"]}
    assert summary["mode"] == "ray" and summary["ok"] == 2
    assert "died 2 times" in reasons["crash.txt"] and "time limit of 8 s" in reasons["hang.txt"]
    assert (tmp_path / "out/upper/d.txt").read_text() == "DELTA"


def test_in_process_item_past_its_time_limit_fails_and_the_next_runs(tmp_path, tracking_uri):
    items = make_items(tmp_path / "in", {"a": "hang", "b": "beta"})
    options = RunOptions(progress=False, ray=False, batch=BatchConfig(item_timeout_base_s=1.0))
    summary = run_job(_spec(tmp_path / "out", tracking_uri), items, [], options)
    assert (summary["ok"], summary["failed"]) == (1, 1)
    assert "time limit of 1 s" in summary["failures"][0]["reason"]
