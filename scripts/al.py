#!/usr/bin/env python
"""The active-learning store tool (`sn72-al`): stats, list, show, label, export, prune; see docs/active_learning.md."""

from cascade.observers.active_learning import main

if __name__ == "__main__":
    raise SystemExit(main())
