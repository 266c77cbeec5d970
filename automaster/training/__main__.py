"""``python -m automaster.training``: see :mod:`automaster.training.cli`."""

import sys

from automaster.training.cli import main

sys.exit(main())
