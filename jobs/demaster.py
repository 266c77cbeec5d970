"""Demaster a corpus into the paired dataset (in-process or on Ray).

    ray job submit --working-dir . -- python jobs/demaster.py --corpus /data/fma_large --out /data/paired
    python jobs/demaster.py --corpus tests/data/music --out results/paired   # starts a local Ray

Arguments: see ``automaster demaster --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when not installed

from automaster.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["demaster", *sys.argv[1:]]))
