"""``python -m automaster.cli <command>``."""

import sys

from automaster.cli import main

sys.exit(main())
