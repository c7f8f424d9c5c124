"""`python -m sonosam ...` is the `sonosam` command (Slicer starts `python -m sonosam serve` with its own Python)."""

import sys

from .cli import main

sys.exit(main())
