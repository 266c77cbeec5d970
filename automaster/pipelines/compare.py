"""``automaster compare``: MLflow runs side by side in the terminal (and as CSV).

One row per run: name and id, job, status, the key parameters (model mode, λ1-λ3, learning
rate, workers, epochs), the chosen metrics and the duration, sorted by the first metric (lower
first; throughputs such as ``tracks_per_s`` higher first). Reads the same store the jobs write
(``sqlite:///<cwd>/mlflow.db`` unless ``--tracking-uri``/``$MLFLOW_TRACKING_URI``); for the
browser view: ``mlflow ui --backend-store-uri <that store>``.
"""

from __future__ import annotations

import csv as csv_module
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from automaster.pipelines.tracking import resolve_tracking_uri

DEFAULT_METRICS = [
    "val/mel_l1_db", "val/mel_l1_db_identity", "val/mrstft", "val/mae_ratio", "best/val/mel_l1_db",
    "tracks_per_s", "files_per_s",
]  # fmt: skip
# (column, MLflow param): the settings that tell runs apart.
PARAMS = [
    ("mode", "model.mode"), ("λ1", "loss.mel_l1"), ("λ2", "loss.params"), ("λ3", "loss.perceptual"),
    ("lr", "train.lr"), ("workers", "train.workers"), ("epochs", "train.epochs"),
]  # fmt: skip
_MAX_RUNS = 10_000


class CompareError(ValueError):
    """Nothing to compare: no store, no such experiment, no runs."""


def _higher_is_better(metric: str) -> bool:
    return metric.endswith("_per_s") or metric.endswith("per_s")


def compare_runs(
    experiments: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    *,
    top: int = 0,
    csv: str | Path | None = None,
    tracking_uri: str | None = None,
) -> list[dict[str, Any]]:
    """Rows (one dict per run, keys = columns in order) of the runs of ``experiments`` (default all).

    Sorted by the first of ``metrics`` (default :data:`DEFAULT_METRICS`); runs without it last.
    ``top`` keeps the best K; ``csv`` also writes the rows there. Raises :class:`CompareError`
    when the store, the experiment or the runs are missing.
    """
    from mlflow.exceptions import MlflowException

    if top < 0:
        raise CompareError(f"--top must be >= 0, got {top}")
    if csv:
        _check_csv(Path(csv))
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        raise CompareError(f"no MLflow store at {uri[len('sqlite:///'):]}: run a job first, or pass --tracking-uri")
    try:
        rows = _rows(uri, experiments, metrics)
    except MlflowException as exc:  # an unknown scheme, a server that does not answer: one line, not a traceback
        reason = " ".join(str(exc).split())
        raise CompareError(f"--tracking-uri {uri}: MLflow cannot read it ({reason[:300]})") from None
    if top:
        rows = rows[:top]
    for row in rows:
        del row["_start"]
    if csv:
        try:
            write_csv(rows, csv)
        except OSError as exc:
            raise CompareError(f"--csv {csv}: cannot write it ({exc.strerror or exc})") from None
    return rows


def _check_csv(path: Path) -> None:
    """``--csv``: a file whose folder exists or can be made and takes files (checked before MLflow)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompareError(f"--csv {path}: its folder cannot be made ({(exc.strerror or str(exc)).lower()})") from None
    if path.is_dir() or not os.access(path.parent, os.W_OK):
        raise CompareError(f"--csv {path}: {'is a folder' if path.is_dir() else 'its folder takes no files'}")


def _rows(uri: str, experiments: Sequence[str] | None, metrics: Sequence[str] | None) -> list[dict[str, Any]]:
    """Every run's row, best first (each with ``_start`` for the ties)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    if experiments:
        found = {name: client.get_experiment_by_name(name) for name in experiments}
        missing = [name for name, exp in found.items() if exp is None]
        if missing:
            known = sorted(e.name for e in client.search_experiments())
            raise CompareError(f"no experiment {', '.join(map(repr, missing))} in {uri} (experiments: {', '.join(known) or 'none'})")
        exps = list(found.values())
    else:
        exps = client.search_experiments()
    names = {e.experiment_id: e.name for e in exps}
    runs = _search(client, list(names)) if names else []
    if not runs:
        where = f"experiment(s) {', '.join(names.values())}" if experiments else "any experiment"
        raise CompareError(f"no runs in {where} at {uri}")

    metrics = list(metrics or DEFAULT_METRICS)
    if not metrics:
        raise CompareError("--metric needs at least one metric name")
    by_id = {r.info.run_id: r.info.run_name for r in runs}
    rows = [_row(run, names, metrics, by_id) for run in runs]
    key, sign = metrics[0], (-1.0 if _higher_is_better(metrics[0]) else 1.0)
    rows.sort(key=lambda r: (r[key] is None, sign * r[key] if r[key] is not None else 0.0, -r["_start"]))
    return rows


def _search(client, experiment_ids: list[str]) -> list:
    runs, token = [], None
    while len(runs) < _MAX_RUNS:
        page = client.search_runs(experiment_ids, max_results=1000, page_token=token, order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _row(run, experiments: dict[str, str], metrics: list[str], names: dict[str, str]) -> dict[str, Any]:
    info, data = run.info, run.data
    end = info.end_time or int(time.time() * 1000)
    parent = data.tags.get("mlflow.parentRunId")
    row: dict[str, Any] = {
        "run": info.run_name or "",
        "run_id": info.run_id,
        "experiment": experiments.get(info.experiment_id, info.experiment_id),
        "job": data.tags.get("automaster.job", ""),
        "parent": names.get(parent, parent or "") if parent else "",
        "status": info.status,
    }
    for column, param in PARAMS:
        row[column] = data.params.get(param, "")
    for metric in metrics:
        value = data.metrics.get(metric)
        row[metric] = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    row["duration_s"] = round((end - info.start_time) / 1000.0, 1) if info.start_time else None
    row["_start"] = info.start_time or 0
    return row


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """The rows as CSV (full run ids, full-precision numbers, empty cells for missing values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv_module.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _cell(column: str, value: Any) -> str:
    if value is None or value == "":
        return "-"
    if column == "run_id":
        return str(value)[:8]
    if isinstance(value, float):
        return f"{value:.4g}"
    if column in ("λ1", "λ2", "λ3", "lr"):
        try:
            return f"{float(value):.3g}"
        except ValueError:
            return str(value)
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """An aligned text table; columns empty in every row are left out, run ids shortened."""
    if not rows:
        return "(no runs)"
    keep = [c for c in rows[0] if c in ("run", "run_id", "status") or any(r[c] not in (None, "") for r in rows)]
    cells = [[_cell(c, r[c]) for c in keep] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(keep)]
    numeric = [all(isinstance(r[c], (int, float)) or r[c] in (None, "") for r in rows) and c != "run" for c in keep]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(keep), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)
