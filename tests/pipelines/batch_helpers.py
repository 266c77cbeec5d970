"""A tiny processor for the batch skeleton's tests: text in, two outputs out, with misbehaviours
chosen by the input's content (``fail``, ``crash``, ``hang``, ``die-after-first``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from automaster.audio import FileError


class UpperProcessor:
    """Writes ``upper/<key>.txt`` (the text upper-cased) and ``length/<key>.txt``."""

    def __init__(self, suffix: str = ""):
        self.suffix = suffix

    def process(self, item: dict[str, Any], staging) -> dict[str, Any]:
        text = Path(item["path"]).read_text()
        if text == "fail":
            raise FileError(f"{item['path']}: says fail")
        if text == "crash":
            os._exit(3)  # a poison input that kills its worker process
        if text == "hang":
            time.sleep(3600)
        Path(staging.path(f"upper/{item['key']}.txt")).write_text(text.upper() + self.suffix)
        if text == "die-after-first":
            os._exit(4)  # killed between an item's outputs
        Path(staging.path(f"length/{item['key']}.txt")).write_text(str(len(text)))
        return {"n_chars": len(text), "report": {"first": text[:1]}}


def make_items(folder: Path, contents: dict[str, str]) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for key, text in contents.items():
        (folder / f"{key}.txt").write_text(text)
        items.append({"key": key, "path": str(folder / f"{key}.txt"), "rel_path": f"{key}.txt", "duration_s": 0.0})
    return items
