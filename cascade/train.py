"""`python -m cascade.train`: fine-tune the hf_classifier expert on labelled images (see cascade/training/cli.py)."""

from __future__ import annotations

import sys

from cascade.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
