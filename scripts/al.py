#!/usr/bin/env python
"""Operator tool for the active-learning store: stats, list, show, label, export, prune.

A thin wrapper around `python -m cascade.observers.active_learning`; see docs/active_learning.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without installing the package: the project root holds `cascade/`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cascade.observers.active_learning import main

if __name__ == "__main__":
    raise SystemExit(main())
