#!/usr/bin/env python
"""Fuzz the miner's request path for some minutes: `python scripts/fuzz_requests.py --minutes 5` (see --help).

The code lives in neurons/fuzz/ (`python -m neurons.fuzz` is the same command), so this file only hands over to it.
"""

import sys

from neurons.fuzz.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
