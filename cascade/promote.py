"""`python -m cascade.promote`: serve a candidate only when it beats the served cascade (cascade/promotion/cli.py)."""

from __future__ import annotations

import sys

from cascade.promotion.cli import main

if __name__ == "__main__":
    sys.exit(main())
