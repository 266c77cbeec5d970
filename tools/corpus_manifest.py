"""MANIFEST.csv, LICENSES.md and the end-of-run summary of a corpus built from packages.

A package's *record* is what :mod:`tools.debian_corpus` keeps in ``<out>/.state/<package>.json``:
``package``, ``version``, ``status``, ``rows`` (one manifest row per kept file), ``dropped``
(reason -> files), ``duplicates``, ``unreadable`` and ``copyright`` (the debian/copyright text).
"""

from __future__ import annotations

import collections
import csv
import os

MANIFEST_COLUMNS = (
    "path", "package", "version", "original_path", "duration_s", "sample_rate", "channels",
    "format", "licence", "size_bytes", "sha256",
)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        out.write(text)
    os.replace(tmp, path)


def write_manifest(rows: list[dict], path: str) -> None:
    """Write ``rows`` as CSV (:data:`MANIFEST_COLUMNS`, sorted by ``path``); unknown keys are errors."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r["path"]):
            writer.writerow(row)
    os.replace(tmp, path)


def read_manifest(path: str) -> list[dict]:
    """The rows of a MANIFEST.csv, numbers parsed."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["duration_s"] = float(row["duration_s"])
        for key in ("sample_rate", "channels", "size_bytes"):
            row[key] = int(row[key])
    return rows


def totals(rows: list[dict]) -> dict:
    """Files, hours and bytes of ``rows``."""
    return {
        "songs": len(rows),
        "hours": sum(float(r["duration_s"]) for r in rows) / 3600,
        "bytes": sum(int(r["size_bytes"]) for r in rows),
    }


def by_key(rows: list[dict], key: str) -> list[tuple[str, dict]]:
    """``(value, totals)`` per value of ``rows[key]``, most hours first."""
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
        groups[row[key]].append(row)
    table = [(value, {**totals(group), "packages": sorted({r["package"] for r in group})})
             for value, group in groups.items()]
    return sorted(table, key=lambda item: (-item[1]["hours"], item[0]))


def write_licences(records: list[dict], out: str, held_out: dict[str, str]) -> None:
    """``out/LICENSES.md`` (by licence and by package) and ``out/LICENSES/<package>.copyright``."""
    used = [r for r in records if r.get("rows")]
    rows = [row for r in used for row in r["rows"]]
    os.makedirs(os.path.join(out, "LICENSES"), exist_ok=True)
    for record in used:
        _write_atomic(os.path.join(out, "LICENSES", f"{record['package']}.copyright"), record["copyright"])
    all_totals = totals(rows)
    lines = [
        "# Licences of the Debian music corpus",
        "",
        f"{all_totals['songs']} files, {all_totals['hours']:.2f} h, {all_totals['bytes'] / 1e9:.2f} GB "
        f"from {len(used)} packages of Debian main (DFSG-free). Each file's licence is that of the most "
        "specific `Files:` stanza of its package's debian/copyright (copied to `LICENSES/<package>."
        "copyright`); `unstructured:` marks licence names found in a free-form copyright file.",
        "",
        "## By licence",
        "",
        "| licence | files | hours | packages |",
        "|---|---|---|---|",
    ]
    for licence, t in by_key(rows, "licence"):
        lines.append(f"| {licence} | {t['songs']} | {t['hours']:.2f} | {', '.join(t['packages'])} |")
    lines += ["", "## By package", "", "| package | version | files | hours | licences |", "|---|---|---|---|---|"]
    for package, t in by_key(rows, "package"):
        record = next(r for r in used if r["package"] == package)
        licences = sorted({row["licence"] for row in record["rows"]})
        lines.append(f"| {package} | {record['version']} | {t['songs']} | {t['hours']:.2f} | {'; '.join(licences)} |")
    lines += ["", "## Never taken", ""]
    lines += [f"- `{pattern}`: {reason}" for pattern, reason in held_out.items()]
    _write_atomic(os.path.join(out, "LICENSES.md"), "\n".join(lines) + "\n")


def summary_lines(records: list[dict]) -> list[str]:
    """A plain-text report of a run: packages by outcome, totals, what was dropped and why."""
    status = collections.defaultdict(list)
    for record in records:
        kind = record["status"] if record["status"] != "done" else ("used" if record["rows"] else "no music")
        status[kind].append(record["package"])
    rows = [row for r in records for row in r.get("rows", [])]
    t = totals(rows)
    dropped: collections.Counter = collections.Counter()
    for record in records:
        dropped.update(record.get("dropped", {}))
    lines = [f"packages: {len(records)} ({', '.join(f'{len(v)} {k}' for k, v in sorted(status.items()))})"]
    lines += [f"  {kind}: {' '.join(sorted(names))}" for kind, names in sorted(status.items())]
    lines.append(f"kept: {t['songs']} files, {t['hours']:.2f} h, {t['bytes'] / 1e9:.2f} GB")
    lines += [f"dropped: {count} {reason}" for reason, count in dropped.most_common()]
    for record in records:
        for item in record.get("unreadable", []):
            lines.append(f"unreadable: {record['package']} {item['original_path']}: {item['reason']}")
        if record["status"] == "failed":
            lines.append(f"FAILED {record['package']}: {record['error']}")
    return lines
