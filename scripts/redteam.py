#!/usr/bin/env python
"""Red-team a running miner: `python scripts/redteam.py --help` (installed as `sn72-redteam`).

The code lives in neurons/hostile/ (an installed package), so this file only hands over to it.
"""

import sys

from neurons.hostile.redteam import main

if __name__ == "__main__":
    sys.exit(main())
