"""What an epoch of each training preset costs: images per second (a spread over windows), peak memory, 35k images.

    python3 -m sn72_lab.training_bench --presets all --size real --device cuda --out OUT      # on the GPU box
    python -m sn72_lab.training_bench --presets all --size tiny --device cpu --images 80 --height 48 --out OUT

Each preset's starting model is built locally at its real size with random weights (sn72_lab/preset_models.py:
the hub model's architecture from the model classes' configs, its processor's geometry; nothing is downloaded)
and trained through the real trainer (`sn72_tools.training.run.train`) with the preset's recipe (its loss, resize,
batch size), bf16 on CUDA, on generated JPEGs at `--height` (4:3): data loading, decoding and preprocessing
included, as in a real run. Optimiser steps after the first `--skip-steps` are timed (an interval holding an
evaluation, a checkpoint or an epoch's start is left out) and cut into `--windows` equal windows; images/s is
given per window (median, min, max), with the seconds of one epoch of `--epoch-images` (35,000) images from each.
`compute_images_per_s` times the same model's forward and backward plus the AdamW step on one resident batch
(no data loading): when it is far above the trainer's figure, the loaders bound the epoch. Peak memory is
`torch.cuda.max_memory_allocated` over the preset's run. Every preset stops at `--preset-budget-s` seconds of
training and the whole bench skips what would start after `--deadline-s`: it bounds its own time.
Writes OUT/presets.json (and prints it).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

EPOCH_IMAGES = 35_000  # the published ViT-B/16's training set, about (docs/protocol.md)


class StopAfter:
    """A TrainerCallback that ends training once `seconds` have passed since the first step."""

    def __init__(self, seconds: float) -> None:
        from transformers import TrainerCallback

        limit = self

        class Callback(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                now = time.monotonic()
                limit.started = limit.started or now
                if now - limit.started > limit.seconds:
                    limit.stopped = True
                    control.should_training_stop = True

        self.seconds = seconds
        self.started: float | None = None
        self.stopped = False
        self.callback = Callback()


def windows(intervals: list[float], count: int, batch: int) -> list[float]:
    """Images per second in `count` consecutive windows of equal step counts (fewer when there are fewer steps)."""
    count = max(1, min(count, len(intervals)))
    size = len(intervals) // count
    return [size * batch / sum(intervals[i * size:(i + 1) * size]) for i in range(count)]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def compute_only(model_folder: Path, batch: int, side_hw: tuple[int, int], device: str, precision: str,
                 steps: int = 10, warmup: int = 3) -> float | None:
    """Forward, backward and an AdamW step on one resident batch, bf16 autocast on CUDA: images per second."""
    import torch
    from transformers import AutoModelForImageClassification

    if steps <= 0:
        return None
    model = AutoModelForImageClassification.from_pretrained(model_folder, num_labels=2,
                                                            ignore_mismatched_sizes=True,
                                                            dtype=torch.float32).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pixels = torch.randn(batch, 3, *side_hw, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda" and precision == "bf16")

    def step() -> None:
        with autocast:
            logits = model(pixel_values=pixels).logits
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    began = time.monotonic()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.monotonic() - began)


def run(args: Any) -> int:
    """The --presets mode of sn72_lab.training_bench (its parser holds the flags)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is local: never wait on a hub
    import torch

    from sn72_lab.preset_models import build_for_preset, single_presets
    from sn72_lab.training_bench import StepClock, _gpu_name
    from sn72_tools.training.model import inspect_model
    from sn72_tools.training.recipe import TrainError, build_recipe
    from sn72_tools.training.run import Inputs, resolve_device, train
    from sn72_tools.training.synthetic import make_cone_folder

    began = time.monotonic()
    try:
        presets = single_presets([name.strip() for name in args.presets.split(",") if name.strip()])
        device = resolve_device(args.device)
    except (ValueError, TrainError) as exc:
        print(f"error: {exc}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    images = args.out / f"images-{args.images}-{args.height}"
    if not (images / "1").is_dir():
        make_cone_folder(images, args.images, seed=0, size=(args.height * 4 // 3, args.height))
    results: dict[str, Any] = {
        "what": "training throughput per preset, random weights, the real trainer (data loading included)",
        "size": args.size, "device": device, "gpu": _gpu_name(), "torch": torch.__version__,
        "images": args.images, "image_size": [args.height * 4 // 3, args.height], "workers": args.workers,
        "epoch_images": args.epoch_images, "prepare_seconds": time.monotonic() - began, "presets": {},
    }
    for preset in presets:
        if time.monotonic() - began > args.deadline_s:
            results["presets"][preset] = {"skipped": f"past --deadline-s {args.deadline_s}"}
            continue
        folder = build_for_preset(preset, args.out / "models" / f"{preset}-{args.size}", args.size,
                                  device="cuda" if device == "cuda" else "cpu")
        overrides: dict[str, Any] = {"model": str(folder), "epochs": args.epochs, "patience": 0, "fit_share": 0.0,
                                     "holdout": 0.1, "precision": args.precision, "workers": args.workers,
                                     "batch_size": args.batch_size}
        recipe = build_recipe(preset, overrides)
        clock, limit = StepClock(args.skip_steps), StopAfter(args.preset_budget_s)
        recorder, intervals = _intervals_of(clock)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        inputs = Inputs(data=[images], out=args.out / "runs" / preset, device=args.device, overwrite=True,
                        judge=False, progress=not args.no_progress)
        try:
            outcome = train(recipe, inputs, callbacks=[clock.callback, recorder, limit.callback])
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
            side_hw = inspect_model(str(folder)).geometry.size_hw
            del outcome
            gc.collect()
            compute = compute_only(folder, recipe.batch_size, side_hw, device, _precision(recipe, device),
                                   steps=args.compute_steps)
        except Exception as exc:  # noqa: BLE001  # one failing preset (out of memory) leaves the others
            results["presets"][preset] = {"error": f"{type(exc).__name__}: {exc}"}
            _write(args.out, results, began)
            continue
        entry: dict[str, Any] = {
            "model": _hub_id(preset), "recipe": {k: v for k, v in recipe.model_dump().items() if k != "model"},
            "input_hw": list(side_hw), "batch_size": recipe.batch_size, "steps": clock.steps,
            "timed_steps": len(intervals), "stopped_by_budget": limit.stopped,
            "peak_memory_gib": peak, "compute_images_per_s": compute,
        }
        if intervals:
            per_window = windows(intervals, args.windows, recipe.batch_size)
            entry["images_per_s"] = spread(per_window)
            entry["images_per_s_windows"] = per_window
            entry["epoch_seconds"] = {"median": args.epoch_images / statistics.median(per_window),
                                      "best": args.epoch_images / max(per_window),
                                      "worst": args.epoch_images / min(per_window)}
        else:
            entry["error"] = f"only {clock.steps} steps ran; give more --images or fewer --skip-steps"
        results["presets"][preset] = entry
        _write(args.out, results, began)  # after each preset: a bench cut short still leaves what it measured
        if device == "cuda":
            torch.cuda.empty_cache()
    _write(args.out, results, began)
    print(json.dumps(results, indent=2))
    return 0 if all("images_per_s" in e for e in results["presets"].values()) else 1


def _write(out: Path, results: dict[str, Any], began: float) -> None:
    results["wall_seconds"] = time.monotonic() - began
    (out / "presets.json").write_text(json.dumps(results, indent=2) + "\n")


def _intervals_of(clock: Any) -> tuple[Any, list[float]]:
    """A TrainerCallback (after `clock`'s) that keeps each interval the StepClock timed, and the list it fills."""
    from transformers import TrainerCallback

    intervals: list[float] = []
    last = [0.0]

    class Intervals(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *_: Any, **__: Any) -> None:
            if clock.seconds > last[0]:  # the clock timed this step
                intervals.append(clock.seconds - last[0])
                last[0] = clock.seconds

    return Intervals(), intervals


def _precision(recipe: Any, device: str) -> str:
    return "bf16" if device == "cuda" and recipe.precision in ("auto", "bf16") else "fp32"


def _hub_id(preset: str) -> str:
    from sn72_tools.training.recipe import PRESETS

    return f"{PRESETS[preset]['model']} (random weights, built locally)"
