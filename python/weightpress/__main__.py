"""``python -m weightpress``: the command line (same as the ``weightpress`` entry point)."""

import sys

from .cli import main

sys.exit(main())
