"""Train the U-Net + LSTM cascade on a demastered dataset (Ray Train).

    ray job submit --working-dir . -- python jobs/train.py --data /data/paired --out /data/train --workers 2
    python jobs/train.py --data results/paired --out results/train   # starts a local Ray

Arguments: see ``automaster train --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when not installed

from automaster.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
