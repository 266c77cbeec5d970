"""What a master job takes in: files, folders and per-file references, and the names of its outputs.

``--input`` may be given several times, each a file or a folder (recursive). One folder keeps
today's layout (outputs mirror its relative paths). Several inputs name each output after its
input: a file by its own name, a folder's files under the folder's name, so two inputs never
write the same output (clashes get ``~2``, ``~3``... in input order). A file reached twice (the
same ``--input`` twice, ``./a.flac`` beside ``a.flac``, a symbolic link, a file inside a folder
also given) is mastered once; the repeat is passed over with the reason. ``--references CSV`` lists
``input,reference`` pairs: the inputs are the CSV's, each mastered toward its own reference
(relative paths are read from the CSV's folder).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
from typing import Any

from automaster import storage
from automaster.audio import audio_info, is_audio_file
from automaster.config import ConfigError
from automaster.corpus import audio_files

# Output format by input extension: what soundfile writes stays, MP3/AIFF become FLAC.
_OUTPUT_EXT = {".wav": ".wav", ".flac": ".flac", ".ogg": ".ogg", ".oga": ".ogg", ".mp3": ".flac", ".aiff": ".flac", ".aif": ".flac"}
# What a single output file may be (the format follows --out's extension).
FILE_OUTPUT_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3")
REFERENCE_COLUMNS = ("input", "reference")
# The longest output file name: a file system takes 255 bytes, and the report is <name>.json.
MAX_OUTPUT_NAME = 255 - len(".json")


def output_rel_path(rel_path: str) -> str:
    """The output name of an input's relative path: same name; ``.mp3``/``.aiff`` -> ``.flac``."""
    root, ext = posixpath.splitext(rel_path)
    out_ext = _OUTPUT_EXT.get(ext.lower())
    if out_ext is None:
        raise ValueError(f"not an audio file name: {rel_path!r}")
    return root + (ext if out_ext == ext.lower() else out_ext)


def plan_output_names(rel_paths: list[str], audio_dir: str = "audio") -> tuple[dict[str, str], list[dict[str, str]]]:
    """``({input rel: output rel}, collisions)``: every output name unique by construction.

    An input keeps its own name when its format is written as is (``a.flac`` -> ``a.flac``);
    one converted to FLAC (``a.mp3``) takes ``a.flac``, else ``a.mp3.flac``, else
    ``a.mp3~2.flac``, ``~3``... in sorted order, so the same inputs always get the same names.
    Names differing only in case count as the same (``A.wav`` beside ``a.wav``: ``a~2.wav``).
    Each input that did not get its first choice is listed in ``collisions`` with the reason; a
    name too long for its report (:data:`MAX_OUTPUT_NAME`) is shortened (:func:`_shortened`).
    """
    first = {rel: output_rel_path(rel) for rel in rel_paths}
    # Names are unique without regard to case: the output folder may be on a file system that
    # ignores it (macOS, Windows, a FAT drive), where A.flac (from A.mp3) would overwrite a.flac.
    taken: dict[str, str] = {}  # casefolded -> the output name that holds it
    plan: dict[str, str] = {}
    for rel in sorted(r for r, out in first.items() if out == r):
        if rel.casefold() not in taken:
            plan[rel] = rel
            taken[rel.casefold()] = rel
    collisions = []
    for rel in sorted(r for r in rel_paths if r not in plan):
        stem, ext = posixpath.splitext(first[rel])
        if first[rel] == rel:  # its own name, taken by another case of it: a.wav beside A.wav
            candidates = [rel] + [f"{stem}~{n}{ext}" for n in range(2, len(rel_paths) + 2)]
        else:
            candidates = [first[rel], rel + ext] + [f"{rel}~{n}{ext}" for n in range(2, len(rel_paths) + 2)]
        holder = taken.get(first[rel].casefold(), first[rel])
        out = next(c for c in candidates if c.casefold() not in taken)
        taken[out.casefold()] = out
        plan[rel] = out
        if out != first[rel]:
            collisions.append({"rel_path": rel, "output": f"{audio_dir}/{out}",
                               "reason": f"{audio_dir}/{holder} is the output of another input"
                               + ("" if holder == first[rel] else f" (the same name as {posixpath.basename(first[rel])} "
                                  "but for case: one file on macOS and Windows)")})
    for rel in sorted(rel_paths):
        if len(os.fsencode(posixpath.basename(plan[rel]))) > MAX_OUTPUT_NAME:
            plan[rel] = _shortened(plan[rel], rel)
            collisions.append({"rel_path": rel, "output": f"{audio_dir}/{plan[rel]}", "reason": "the name is too "
                               f"long for the files beside it (over {MAX_OUTPUT_NAME} bytes)"})
    return plan, collisions


def _shortened(out_rel: str, rel: str) -> str:
    """``out_rel`` with its file name cut to :data:`MAX_OUTPUT_NAME` bytes: the start of the stem,
    ``~`` and 8 hex digits of the input's name (the same name on every run, unique), the extension."""
    folder, name = posixpath.split(out_rel)
    stem, ext = posixpath.splitext(name)
    tag = "~" + hashlib.sha1(os.fsencode(rel)).hexdigest()[:8]
    while len(os.fsencode(stem + tag + ext)) > MAX_OUTPUT_NAME:
        stem = stem[:-1]  # by characters, so a UTF-8 name stays UTF-8
    return posixpath.join(folder, stem + tag + ext)


def _unique(rel: str, taken: set[str]) -> str:
    """``rel``, or ``stem~2.ext``, ``~3``... when another input already took it."""
    if rel not in taken:
        return rel
    stem, ext = posixpath.splitext(rel)
    n = 2
    while f"{stem}~{n}{ext}" in taken:
        n += 1
    return f"{stem}~{n}{ext}"


def _base_name(path: str) -> str:
    return posixpath.basename(path.rstrip("/" + os.sep).replace(os.sep, "/")) or "input"


def _identity(path: str) -> str:
    """What makes two inputs the same: a local file's real path (links and ``./`` resolved), else the URI."""
    return os.path.realpath(storage.local_path(path)) if storage.is_local(path) else path


def distinct_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``(inputs, repeats)``: each file or folder once, in the order given (by :func:`_identity`:
    ``a.flac``, ``./a.flac`` and a link to it are one input); ``repeats`` are ``(input, the one it repeats)``."""
    first: dict[str, str] = {}
    kept, repeats = [], []
    for value in inputs:
        key = _identity(value)
        if key in first:
            repeats.append((value, first[key]))
        else:
            first[key] = value
            kept.append(value)
    return kept, repeats


def repeat_reason(path: str, kind: str, first: str) -> str:
    """Why ``path``, a repeat of ``first``, was passed over (one line of the summary)."""
    if path == first:
        return f"given twice: the {kind} is mastered once"
    return f"the same {kind} as {storage.display(first)}: mastered once"


def _repeat(path: str, kind: str, first: str) -> dict[str, str]:
    """A passed-over entry for ``path``, which repeats ``first`` (``repeat_of``: the console lists these)."""
    return {"path": path, "reason": repeat_reason(path, kind, first), "repeat_of": first}


def scan_inputs(inputs: list[str], exclude: tuple[str, ...]) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """``(audio, passed over)`` of every ``--input``: ``(path, relative name)`` per audio file,
    ``{path, reason}`` per file seen and not taken (``repeat_of`` too for a repeat).

    One folder: names relative to it (today's layout, so resuming a folder job still works).
    Otherwise a file is named by its base name and a folder's files by ``<folder name>/<rel>``.
    An input or a file reached a second time (:func:`distinct_inputs`, a folder holding a file
    also given) is passed over, with the one it repeats in its reason: each file is mastered once.

    Raises:
        FileNotFoundError: an input that does not exist.
        ConfigError: a file input that is not audio (by its extension).
    """
    files: list[tuple[str, str]] = []
    passed: list[dict[str, str]] = []
    taken: set[str] = set()
    inputs, repeats = distinct_inputs(inputs)
    passed += [_repeat(value, "folder" if storage.is_dir(value) else "file", first) for value, first in repeats]
    seen: dict[str, str] = {}  # identity -> the path that reached the file first

    def add(path: str, name: str) -> None:
        key = _identity(path)
        if key in seen:
            passed.append(_repeat(path, "file", seen[key]))
            return
        seen[key] = path
        name = _unique(name, taken)
        taken.add(name)
        files.append((path, name))

    for value in sorted(inputs, key=storage.is_dir):  # files first: a file given by itself keeps its own name
        if storage.is_dir(value):
            found, skipped = audio_files(value, exclude)
            prefix = "" if len(inputs) == 1 else _base_name(value) + "/"
            for path, rel in found:
                add(path, prefix + rel)
            passed += [{"path": p, "reason": r} for p, r in skipped]
        elif storage.exists(value):
            if not is_audio_file(value):
                raise ConfigError(f"--input {storage.display(value)}: not an audio file by its extension "
                                  "(WAV/FLAC/OGG/MP3/AIFF)")
            add(value, _base_name(value))
        else:
            raise FileNotFoundError(f"--input {storage.display(value)}: no such file or folder")
    return files, passed


def read_references(csv_path: str) -> list[tuple[str, str]]:
    """``[(input, reference)]`` from a CSV with the columns ``input,reference`` (a header row;
    relative paths are relative to the CSV's folder).

    Raises:
        ConfigError: unreadable, no such columns, an empty cell, a missing file or no rows (the
            message names the row).
    """
    try:
        text = storage.read_bytes(csv_path).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--references {storage.display(csv_path)}: cannot read it ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if not all(c in fields for c in REFERENCE_COLUMNS):
        raise ConfigError(f"--references {storage.display(csv_path)}: needs a header row with the columns "
                          f"input,reference (got {','.join(fields) or 'nothing'})")
    base = os.path.dirname(os.path.abspath(storage.local_path(csv_path))) if storage.is_local(csv_path) else ""
    pairs = []
    for n, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not any(row.values()):
            continue
        pair = []
        for column in REFERENCE_COLUMNS:
            value = row.get(column, "")
            if not value:
                raise ConfigError(f"--references {storage.display(csv_path)} line {n}: empty {column}")
            path = value if ("://" in value or os.path.isabs(value) or not base) else os.path.join(base, value)
            if not storage.is_file(path):
                raise ConfigError(f"--references {storage.display(csv_path)} line {n}: {column} "
                                  f"{storage.display(value)}: no such file")
            pair.append(path)
        pairs.append((pair[0], pair[1]))
    if not pairs:
        raise ConfigError(f"--references {storage.display(csv_path)}: no rows")
    return pairs


def plan_items(
    inputs: list[str], exclude: tuple[str, ...], references: dict[str, str] | None = None, audio_dir: str = "audio",
) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[dict[str, str]]]:
    """``(items, passed over, name collisions)`` of the inputs; with ``references`` (by input
    path) each item carries its ``reference``. Items are sorted by output name."""
    files, passed = scan_inputs(inputs, exclude)
    plan, collisions = plan_output_names([rel for _, rel in files], audio_dir)
    items = []
    for path, rel in files:
        try:
            duration = audio_info(path).duration_s
        except Exception:  # an unreadable file fails in its worker, with the reason
            duration = None
        item = {"key": plan[rel], "path": path, "rel_path": rel, "out_rel": plan[rel], "duration_s": duration}
        if references is not None:
            item["reference"] = references[path]
        items.append(item)
    return items, passed, collisions


def is_file_output(out: str) -> bool:
    """Whether ``--out`` names an audio file (by its extension) rather than a folder."""
    return is_audio_file(out) and not storage.is_dir(out)
