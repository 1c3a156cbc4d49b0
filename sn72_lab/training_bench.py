"""Training time per 1,000 images through the real trainer (`sn72_tools.training.run.train`), on generated scenes.

    python -m sn72_lab.training_bench --model tiny-vit --images 600 --height 48           # this CPU
    bash scripts/train_bench.sh OUT                                                     # ViT-B/16 on CUDA
    python3 -m sn72_lab.training_bench --presets all --size real --device cuda --out OUT   # every preset (below)

`--presets` times the training presets instead (sn72_lab/preset_bench.py: images/s over windows, peak memory,
the cost of an epoch of 35,000 images).

The model is built locally with random weights (sn72_lab/tiny_models.py: `tiny-vit`, or `vit-b16`, the
subnet's architecture at 224 px), the images are generated (sn72_tools/training/synthetic.py), and the run
is the normal one without the eval tool's verdicts. Steady-state time is measured between optimiser
steps, after the first `--skip-steps` (start-up, allocator and kernel warm-up), leaving out the per-epoch
held-out evaluation and checkpoint: data loading, decoding and preprocessing included, as in a real run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from sn72_tools.training.recipe import TrainError

BUILDERS = ("tiny-vit", "vit-b16")


def _build(name: str, folder: Path) -> Path:
    from sn72_lab.tiny_models import build_tiny_vit, build_vit_b16

    if not (folder / "config.json").is_file():
        (build_tiny_vit if name == "tiny-vit" else build_vit_b16)(folder)
    return folder


class StepClock:
    """Times the intervals between optimiser steps (data loading included) after the first `skip` steps; an
    interval holding an evaluation, a checkpoint or an epoch's start is left out (a TrainerCallback)."""

    def __init__(self, skip: int) -> None:
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                now = time.monotonic()
                clock.steps += 1
                if clock.last_s is not None and not clock.interrupted and clock.steps > clock.skip:
                    clock.seconds += now - clock.last_s
                    clock.timed += 1
                clock.last_s, clock.interrupted = now, False

            def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                clock.interrupted = True

            def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                clock.interrupted = True

            def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                clock.interrupted = True

        self.skip = skip
        self.steps = self.timed = 0
        self.seconds = 0.0
        self.last_s: float | None = None
        self.interrupted = False
        self.callback = Callback()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sn72_lab.training_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=BUILDERS, default="tiny-vit", help="architecture, random weights")
    parser.add_argument("--images", type=int, default=600, help="generated images (half roadwork)")
    parser.add_argument("--height", type=int, default=48, help="height of the generated 4:3 JPEGs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--skip-steps", type=int, default=3, help="optimiser steps not timed (warm-up)")
    parser.add_argument("--out", type=Path, default=Path("train-bench"), help="work folder; bench.json goes here")
    parser.add_argument("--no-progress", action="store_true")
    presets = parser.add_argument_group("--presets mode (sn72_lab/preset_bench.py)")
    presets.add_argument("--presets", metavar="NAMES",
                         help="comma-separated presets of sn72_tools/training/recipe.py (an ensemble preset: its "
                              "members), or all; times each with its recipe instead of --model")
    presets.add_argument("--size", choices=["tiny", "real"], default="real",
                         help="real: the hub model's architecture (random weights); tiny: for tests on a CPU")
    presets.add_argument("--windows", type=int, default=5, help="measured windows per preset (default 5)")
    presets.add_argument("--epoch-images", type=int, default=35_000, help="the epoch costed (default 35,000)")
    presets.add_argument("--compute-steps", type=int, default=10,
                         help="steps of the no-data-loading comparison per preset (0: none)")
    presets.add_argument("--preset-budget-s", type=float, default=90.0,
                         help="training seconds per preset before it is stopped (default 90)")
    presets.add_argument("--deadline-s", type=float, default=480.0,
                         help="start no preset after this many seconds of the bench (default 480)")
    args = parser.parse_args(argv)
    if args.images < 20 or args.height < 16 or args.batch_size < 1:
        parser.error("--images must be >= 20, --height >= 16 and --batch-size >= 1")
    if args.presets:
        from sn72_lab import preset_bench

        if args.windows < 1 or args.epoch_images < 1:
            parser.error("--windows and --epoch-images must be at least 1")
        given = argv if argv is not None else sys.argv[1:]
        if not any(a == "--batch-size" or a.startswith("--batch-size=") for a in given):
            args.batch_size = None  # each preset's own
        return preset_bench.run(args)
    from sn72_tools.training.recipe import Recipe
    from sn72_tools.training.run import Inputs, resolve_device, train
    from sn72_tools.training.synthetic import make_cone_folder

    try:
        resolve_device(args.device)  # before minutes of building and generating
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    began = time.monotonic()
    model = _build(args.model, args.out / f"model-{args.model}")
    images = args.out / f"images-{args.images}-{args.height}"
    if not (images / "1").is_dir():
        make_cone_folder(images, args.images, seed=0, size=(args.height * 4 // 3, args.height))
    prepared_s = time.monotonic() - began
    clock = StepClock(args.skip_steps)
    recipe = Recipe(model=str(model), epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.batch_size,
                    patience=0, precision=args.precision, workers=args.workers, learning_rate=1e-4,
                    fit_share=0.0)  # a benchmark of training steps: no calibration set to keep
    inputs = Inputs(data=[images], out=args.out / "run", device=args.device, overwrite=True, judge=False,
                    progress=not args.no_progress)
    try:
        outcome = train(recipe, inputs, callbacks=[clock.callback])
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if clock.timed == 0:
        print(f"error: only {clock.steps} steps ran; give more --images or fewer --skip-steps", file=sys.stderr)
        return 2
    timed_images = clock.timed * args.batch_size
    result = {
        "model": args.model, "device": outcome.record["run"]["device"], "precision": outcome.record["run"]["precision"],
        "gpu": _gpu_name(), "images": args.images, "height": args.height, "train_images": len(outcome.split.train),
        "batch_size": args.batch_size, "workers": args.workers, "steps": clock.steps, "timed_steps": clock.timed,
        "seconds_per_1000_images": clock.seconds / timed_images * 1000, "images_per_s": timed_images / clock.seconds,
        "train_seconds_total": outcome.train_seconds, "prepare_seconds": prepared_s,
        "wall_seconds": time.monotonic() - began,
    }
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
