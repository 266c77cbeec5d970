"""Evaluate a model against the clean originals of degraded clips, next to baselines (in-process or on Ray).

    ray job submit --working-dir . -- python jobs/evaluate.py --model /models/run1 --clean /data/fma --out /data/eval
    python jobs/evaluate.py --model results/demo/train/model --clean tests/data/music --out results/eval --clip-seconds 5   # starts a local Ray

Arguments: see ``automaster evaluate --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when not installed

from automaster.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
