"""Search the loss weights and learning rate with Ray Tune (trials as MLflow child runs).

    ray job submit --working-dir . -- python jobs/tune.py --data /data/paired --out /data/tune --samples 16 --epochs 10
    python jobs/tune.py --data results/paired --out results/tune --samples 4   # starts a local Ray

Arguments: see ``automaster tune --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when not installed

from automaster.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
