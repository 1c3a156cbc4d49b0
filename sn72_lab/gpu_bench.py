"""Reproduce the GPU figures of docs/performance.md on a CUDA machine, in one go.

    sn72-gpu-bench [OUT_DIR]          # default OUT_DIR: bench-results
    sn72-gpu-bench --dry-run          # print the steps, run nothing

Builds the models locally with random weights (nothing is downloaded), then runs each benchmark of
`sn72-bench` with its JSON written to OUT_DIR/<step>.json. A step that fails or runs past
--step-timeout is reported and the next one runs; the exit code is 1 if any step failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

MODELS = Path(".bench/models")
STEPS: list[tuple[str, list[str]]] = [
    ("baseline", ["baseline", "--model", f"{MODELS}/vit-b16", "--device", "cuda:0", "--requests", "300"]),
    ("ceiling", ["ceiling", "--model", f"{MODELS}/vit-b16", "--device", "cuda:0", "--batch", "256"]),
    ("engine", ["engine", "--cascade", "config/cascade.bench-gpu.yaml", "--requests", "6000", "--concurrency", "512",
                "--decode-workers", "12"]),
    ("backends", ["backends", "--cascade", "config/cascade.bench-backends.yaml", "--device", "cuda:0"]),
    ("backends-owlv2", ["backends", "--cascade", "config/cascade.bench-owlv2.yaml", "--device", "cuda:0", "--batches",
                        "1,8,16,32"]),
    ("find-batch", ["find-batch", "--cascade", "config/cascade.bench-gpu.yaml", "--device", "cuda:0", "--budget-ms",
                    "100", "--reps", "8"]),
    ("axon", ["axon", "--cascade", "config/cascade.bench-gpu.yaml", "--requests", "2000", "--concurrency", "64",
              "--wallets", "8", "--decode-workers", "8"]),
    ("roundtrip", ["roundtrip", "--cascade", "config/cascade.bench-gpu.yaml", "--requests", "200"]),
]
TINY = ["tiny-vit", "vit-b16", "tiny-clip", "tiny-yolo", "yolo11n", "tiny-vlm", "tiny-owlv2", "owlv2-base"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sn72-gpu-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=Path("bench-results"), help="folder for the JSON files")
    parser.add_argument("--step-timeout", type=float, default=float(os.environ.get("BENCH_STEP_TIMEOUT", 300)),
                        help="seconds per step (default 300, or $BENCH_STEP_TIMEOUT)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and exit")
    args = parser.parse_args(argv)
    python = sys.executable
    build = [python, "-m", "sn72_lab.make_tiny_models", "--out", str(MODELS), *TINY]
    steps = [(name, [python, "-m", "sn72_lab.bench", *cmd, "--json", str(args.out / f"{name}.json")])
             for name, cmd in STEPS]
    if args.dry_run:
        for name, cmd in [("models", build), *steps]:
            print(f"{name}: {' '.join(cmd)}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    failed = []
    for index, (name, cmd) in enumerate([("models", build), *steps], 1):
        print(f"== [{index}/{len(steps) + 1}] {name}: {' '.join(cmd[1:])}", flush=True)
        try:
            code = subprocess.run(cmd, env=env, timeout=args.step_timeout if name != "models" else None).returncode
        except subprocess.TimeoutExpired:
            code = 124
        if code != 0:
            print(f"FAILED {name} (exit {code})", flush=True)
            failed.append(name)
    print(f"done: {len(steps) + 1 - len(failed)} of {len(steps) + 1} steps ok; JSON in {args.out}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
