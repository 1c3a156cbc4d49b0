#!/usr/bin/env python
"""Query a miner like a validator (`sn72-query`, neurons/query.py); kept so `python scripts/query.py` still works."""

from neurons.query import main

if __name__ == "__main__":
    raise SystemExit(main())
