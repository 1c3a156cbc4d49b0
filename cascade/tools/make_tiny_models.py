#!/usr/bin/env python
"""Build the tiny random-weight models the demo cascade and the tests use (no download needed).

    sn72-make-tiny-models --out .demo/models            # all of them
    sn72-make-tiny-models --out .demo/models tiny-vit   # just one
    sn72-make-tiny-models --out bench-models vit-b16    # a real-size ViT-B/16 (random weights)
    sn72-make-tiny-models --out bench-models owlv2-base # a real-size OWLv2 B/16 at 960 px (random)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cascade.tiny_models import BUILDERS, build_owlv2_base, build_vit_b16, build_yolo11n

# real-size, random weights (benchmarks)
EXTRA = {"vit-b16": build_vit_b16, "yolo11n": build_yolo11n, "owlv2-base": build_owlv2_base}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".demo/models"), help="folder to build into")
    parser.add_argument("names", nargs="*", help=f"which models (default: {', '.join(BUILDERS)})")
    args = parser.parse_args(argv)
    known = {**BUILDERS, **EXTRA}
    names = args.names or list(BUILDERS)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {sorted(known)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        started = time.monotonic()
        path = known[name](args.out / name)
        print(f"built {name:<10} -> {path}  ({time.monotonic() - started:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
