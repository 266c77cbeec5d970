"""Every effects test starts from the same random state: tests that draw test signals with the
global generator (``torch.randn``) are then reproducible, whatever ran before them."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
