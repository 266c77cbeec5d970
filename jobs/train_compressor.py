"""Fit the compressor detector/estimator on waveform statistics (Ray Data, Ray Train; --samples N: Ray Tune).

    ray job submit --working-dir . -- python jobs/train_compressor.py --corpus /data/fma_small --out /data/compressor --samples 8
    python jobs/train_compressor.py --corpus ../shared/data/fma_mini --out results/compressor   # starts a local Ray

Arguments: see ``automaster train-compressor --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when not installed

from automaster.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train-compressor", *sys.argv[1:]]))
