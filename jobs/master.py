"""Master every audio file of a folder with a trained model (in-process or on Ray).

    ray job submit --working-dir . -- python jobs/master.py --model /models/run1 --input /data/in --out /data/mastered
    python jobs/master.py --model results/demo/train/model --input tests/data/music --out results/mastered   # starts a local Ray

Arguments: see ``automaster master --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when not installed

from automaster.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["master", *sys.argv[1:]]))
