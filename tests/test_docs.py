"""The documentation builds in strict mode: a broken link, anchor or nav entry fails the tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
                          capture_output=True, text=True, cwd=config.parent, timeout=300)  # fmt: skip


def test_the_docs_build_strictly(tmp_path):
    proc = _build(REPO / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in ("index.html", "mastering/index.html", "reliability/index.html", "benchmarks/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert (tmp_path / "site" / "master-report.png").is_file()  # the README's picture is the docs' too


def test_a_broken_link_fails_the_build(tmp_path):
    """The check above can fail: a copy of the docs with one link pointed at a missing page does not build."""
    root = tmp_path / "copy"
    shutil.copytree(REPO / "docs", root / "docs", symlinks=False, ignore=shutil.ignore_patterns("*.yaml", "Dockerfile"))
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    index = root / "docs" / "index.md"
    index.write_text(index.read_text().replace("(mastering.md)", "(no-such-page.md)", 1))
    proc = _build(root / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "no-such-page.md" in proc.stderr


def test_the_readme_is_a_front_door():
    """At most 250 lines; every docs page it links to exists."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert links
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, missing


@pytest.mark.parametrize("command", ["master", "demaster", "train", "tune", "compare", "evaluate", "demo", "train-compressor"])
def test_the_readme_names_only_flags_the_commands_have(command):
    """Every ``automaster COMMAND --flag`` in the README and the docs is one the command takes."""
    from automaster.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    known = {opt for action in sub._actions for opt in action.option_strings}
    texts = [(REPO / "README.md").read_text()] + [p.read_text() for p in sorted((REPO / "docs").glob("*.md"))]
    used = {flag for text in texts for line in re.findall(rf"automaster {command}(?![\w-])[^\n`|]*", text) for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)}
    assert used - known == set(), f"automaster {command}: unknown flags {sorted(used - known)}"
