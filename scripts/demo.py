#!/usr/bin/env python
"""The offline end-to-end demo (`sn72-demo`, neurons/demo.py); kept so `python scripts/demo.py` still works."""

from neurons.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
