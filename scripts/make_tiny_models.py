#!/usr/bin/env python
"""Build the tiny random-weight models (`sn72-make-tiny-models`, cascade/tools/make_tiny_models.py); a thin wrapper."""

from cascade.tools.make_tiny_models import main

if __name__ == "__main__":
    raise SystemExit(main())
