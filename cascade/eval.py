"""`python -m cascade.eval`: evaluate a cascade the way validators score it (see cascade/evaluation/cli.py)."""

from __future__ import annotations

import sys

from cascade.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
