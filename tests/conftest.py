"""Shared fixtures: real music from tests/data, and environment for real Ray and MLflow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # any Ray a test starts binds 127.0.0.1

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def music_files() -> list[Path]:
    files = sorted(p for p in (DATA / "music").rglob("*") if p.suffix.lower() in {".wav", ".flac", ".mp3"})
    assert files, f"no music in {DATA / 'music'}"
    return files
