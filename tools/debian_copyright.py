"""The licence of a file shipped in a Debian package, read from the package's debian/copyright.

Machine-readable copyright files (DEP-5) are a list of ``Files:`` stanzas, each with a
``License:``; the licence of an installed file is that of the most specific stanza whose pattern
matches the end of its path (``Files: *`` is the fallback). Free-form copyright files get the
licence names found in the text, prefixed ``unstructured:`` so that a reader knows to check them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re

# Licence names looked for in free-form copyright files, most specific first.
_FREEFORM_LICENCES = (
    (r"CC[- ]BY[- ]SA[- ]?(\d\.\d)?|Attribution[- ]ShareAlike", "CC-BY-SA"),
    (r"CC[- ]BY[- ](\d\.\d)|Creative Commons Attribution(?![- ]ShareAlike)", "CC-BY"),
    (r"CC0|Public Domain Dedication", "CC0"),
    (r"public domain", "public-domain"),
    (r"Lesser General Public|LGPL", "LGPL"),
    (r"GNU General Public License|\bGPL", "GPL"),
    (r"Artistic License", "Artistic"),
    (r"Free Art License|Licence Art Libre", "FAL"),
    (r"\bMIT\b|Permission is hereby granted, free of charge", "MIT"),
    (r"\bBSD\b|Redistribution and use in source and binary forms", "BSD"),
    (r"zlib", "Zlib"),
)


@dataclasses.dataclass(frozen=True)
class Stanza:
    """One ``Files:`` stanza: its patterns and the first line of its ``License:`` field."""

    patterns: tuple[str, ...]
    licence: str


def parse_dep5(text: str) -> list[Stanza]:
    """The ``Files:`` stanzas of a DEP-5 copyright file (empty if it is not DEP-5)."""
    if not re.match(r"\s*Format:", text):
        return []
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields = _fields(block)
        if "files" in fields and "license" in fields:
            patterns = tuple(fields["files"].split())
            # "License: GPL-2+" (the name on the first line), text on the continuation lines.
            licence = next((line.strip() for line in fields["license"].splitlines() if line.strip()), "")
            if patterns and licence:
                stanzas.append(Stanza(patterns, licence))
    return stanzas


def _fields(block: str) -> dict[str, str]:
    """``{lowercase field name: value}`` of one deb822 paragraph; continuation lines appended."""
    fields: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and name is not None:
            fields[name] += "\n" + line.strip()
        elif ":" in line and not line.startswith("#"):
            name, value = line.split(":", 1)
            name = name.strip().lower()
            fields[name] = value.strip()
    return fields


def licence_for(path: str, text: str) -> str:
    """The licence of the installed file ``path`` according to the copyright file ``text``.

    ``path`` may name a member of an archive inside the package (``a/b.zip!/music/x.ogg``); both
    the archive's path and the member's are matched.
    """
    stanzas = parse_dep5(text)
    if not stanzas:
        return freeform_licences(text)
    candidates = [p for p in path.split("!/") if p]
    best, best_score = None, -1
    for stanza in stanzas:
        for pattern in stanza.patterns:
            score = _pattern_score(pattern, candidates)
            if score > best_score:
                best, best_score = stanza, score
    return best.licence if best is not None else freeform_licences(text)


def _pattern_score(pattern: str, paths: list[str]) -> int:
    """Specificity of ``pattern`` (its literal characters) if it matches the end of a path, else -1.

    Source-tree patterns (``data/music/*``) are matched against the tail of installed paths
    (``usr/share/games/x/music/a.ogg``), so a folder name shared by both picks the stanza.
    """
    pattern = pattern.strip("./")
    if pattern in ("", "*"):
        return 0
    pattern_parts = pattern.split("/")
    # Whole pattern first, then without its leading folders (data/music/* -> music/*).
    for first in range(len(pattern_parts)):
        suffix = "/".join(pattern_parts[first:])
        literal = len(suffix.replace("*", "").replace("?", ""))
        if literal == 0:
            break
        for path in paths:
            parts = path.strip("./").split("/")
            tails = ("/".join(parts[start:]) for start in range(len(parts)))
            if any(fnmatch.fnmatchcase(tail, suffix) or fnmatch.fnmatchcase(tail, suffix + "/*") for tail in tails):
                return literal
    return -1


def freeform_licences(text: str) -> str:
    """``unstructured: A; B`` for the licence names found in a free-form copyright text."""
    found = []
    for regex, name in _FREEFORM_LICENCES:
        match = re.search(regex, text, flags=re.IGNORECASE)
        if match and name not in found:
            version = next((g for g in match.groups() if g), "") if match.groups() else ""
            found.append(f"{name}-{version}" if version else name)
    return "unstructured: " + ("; ".join(found) if found else "unknown")
