#!/usr/bin/env python
"""Fetch a cascade's models (`sn72-download-models`, cascade/tools/download_models.py); a thin wrapper."""

from cascade.tools.download_models import main

if __name__ == "__main__":
    raise SystemExit(main())
