#!/usr/bin/env python
"""Build the tiny random-weight models the demo cascade and the tests use (no download needed).

    sn72-make-tiny-models --out .demo/models            # all of them
    sn72-make-tiny-models --out .demo/models tiny-vit   # just one
    sn72-make-tiny-models --out .demo/models small-cnn  # a ResNet of 702k parameters that learns on a CPU (112 px)
    sn72-make-tiny-models --out bench-models vit-b16    # a real-size ViT-B/16 (random weights)
    sn72-make-tiny-models --out bench-models owlv2-base # a real-size OWLv2 B/16 at 960 px (random)
    sn72-make-tiny-models --out .bench/models --device cuda:0 --production full   # the production cascade, on a GPU
    sn72-make-tiny-models --out .bench/models --production tiny                   # its tiny twins (CPU tests)

Real-size models with a `--device` of cuda:N are initialised on that GPU in bfloat16 and saved as safetensors
(Qwen3-VL-8B in well under a minute); on the CPU they are built in float32.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sn72_lab.production_models import LARGE_BUILDERS, PRODUCTION, TWIN_BUILDERS
from sn72_lab.tiny_models import BUILDERS

MARKER = "sn72_built.json"  # written once a build has finished: a build cut short is not taken for a model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".demo/models"), help="folder to build into")
    parser.add_argument("--device", default="cpu", help="where real-size models are built: cpu or cuda:N")
    parser.add_argument("--production", choices=sorted(PRODUCTION),
                        help="the models of config/cascade.bench-production[-tiny].yaml (added to any names given)")
    parser.add_argument("--skip-existing", action="store_true",
                        help=f"leave a model this tool finished building before (its folder holds {MARKER})")
    parser.add_argument("names", nargs="*", help=f"which models (default: {', '.join(BUILDERS)})")
    args = parser.parse_args(argv)
    known = {**BUILDERS, **LARGE_BUILDERS, **TWIN_BUILDERS}
    names = list(dict.fromkeys([*args.names, *(PRODUCTION[args.production] if args.production else [])]))
    names = names or list(BUILDERS)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {sorted(known)}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device must be cpu or cuda:N, got {args.device!r}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA device is available here")
    args.out.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names, 1):
        folder = args.out / name
        if args.skip_existing and (folder / MARKER).is_file():
            print(f"[{index}/{len(names)}] kept  {name:<20} {folder} (already built)", flush=True)
            continue
        started = time.monotonic()
        builder: Callable[..., Path] = known[name]
        takes_device = "device" in inspect.signature(builder).parameters
        path = builder(folder, device=args.device) if takes_device else builder(folder)
        where = args.device if takes_device else "cpu"
        seconds = time.monotonic() - started
        if folder.is_dir():
            (folder / MARKER).write_text(json.dumps({"name": name, "device": where, "seconds": round(seconds, 1)}))
        print(f"[{index}/{len(names)}] built {name:<20} -> {path} on {where} ({seconds:.1f}s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
