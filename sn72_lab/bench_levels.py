"""`sn72-bench levels`: each level of a cascade at batch 1 and at its experts' max_batch, and the device memory each
expert holds against its `memory_gb`.

Every expert of every level is loaded on `--device` through the miner's own backends (in level order, each kept
loaded so that the next one's memory is measured on top), then timed alone and, per level, together. Each expert runs
on a thread of its own, as under the engine's micro-batchers (on a CPU, torch on the main thread measured 8x slower
than on a worker thread here), and the experts of a level run at once, so a level's figure is what a request waits
for that level. Images are JPEG-decoded pictures of mixed sizes, 224x224 to 1920x1080.

Memory per expert on CUDA: `held` is what `torch.cuda.memory_allocated` grew by over its load (weights, buffers,
anything the backend keeps, such as embedded prompts), `peak` the highest `torch.cuda.max_memory_allocated` above
the level before its load, over its load and its batch-max runs (weights + the largest batch's activations: what
`memory_gb` must cover), `parameters` the backend's own `Expert.memory_bytes()`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cascade.config import ASYNC_BACKENDS, load_cascade

GIB = 2**30
# validators send anything from the old 224 px crops to native dashcam frames
MIXED_SIZES = ((224, 224), (640, 480), (1280, 720), (1920, 1080), (1024, 768), (800, 600))


def mixed_images(count: int) -> list[np.ndarray]:
    """`count` decoded pictures cycling through MIXED_SIZES, decoded from JPEG as the miner gets them."""
    import base64
    import io

    from PIL import Image

    from sn72_tools.client import encode_jpeg, synthetic_image

    images = []
    for i in range(count):
        payload = base64.b64decode(encode_jpeg(synthetic_image(i, MIXED_SIZES[i % len(MIXED_SIZES)])))
        images.append(np.asarray(Image.open(io.BytesIO(payload)).convert("RGB")))
    return images


class DeviceMemory:
    """torch's allocator counters for one CUDA device; None everywhere on the CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def allocated(self) -> int | None:
        if not self.cuda:
            return None
        import torch

        return int(torch.cuda.memory_allocated(self.device))

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        if not self.cuda:
            return None
        import torch

        return int(torch.cuda.max_memory_allocated(self.device))


def _gb(value: int | None) -> float | None:
    return None if value is None else value / GIB


def _timings(run: Any, reps: int, warmup: int = 2) -> dict[str, float]:
    """p50/p99/max of `reps` timed calls of `run` after `warmup` untimed ones (p99 of a few reps is about the max)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        run()  # every backend returns host floats: the device work has finished
        times.append((time.perf_counter() - began) * 1000.0)
    return {"p50_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99)), "max_ms": max(times)}


class Worker:
    """A loaded expert and the one thread that runs it, as an engine replica has."""

    def __init__(self, expert: Any) -> None:
        self.expert = expert
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"bench-{expert.name}")

    def submit(self, images: list[np.ndarray]) -> Any:
        return self.thread.submit(self.expert.predict_batch, images)

    def run(self, images: list[np.ndarray]) -> None:
        self.submit(images).result()

    def close(self) -> None:
        self.thread.shutdown()
        self.expert.close()


def _measure_expert(config: Any, device: str, images: list[np.ndarray], reps: int, memory: DeviceMemory) -> Any:
    from cascade.experts.registry import build_expert

    memory.sync()
    before = memory.allocated()
    memory.reset_peak()
    began = time.monotonic()
    expert = build_expert(config, device)
    expert.load()
    memory.sync()
    load_s = time.monotonic() - began
    held = None if before is None else (memory.allocated() or 0) - before
    worker = Worker(expert)
    one = _timings(lambda: worker.run(images[:1]), reps)
    batch = images[: config.max_batch]
    full = _timings(lambda: worker.run(batch), reps)
    full["images_per_s"] = len(batch) * 1000.0 / full["p50_ms"]
    peak = None if before is None else (memory.peak() or 0) - before
    budget_gb = config.memory_gb
    measured_gb = _gb(peak) if peak is not None else _gb(expert.memory_bytes())
    report = {
        "backend": config.backend,
        "model": config.model,
        "load_s": load_s,
        "batch1": one,
        f"batch{len(batch)}": full,
        "max_batch": len(batch),
        "memory": {
            "memory_gb": budget_gb,
            "parameters_gb": _gb(expert.memory_bytes()),
            "held_gb": _gb(held),
            "peak_gb": _gb(peak),
            "within_memory_gb": measured_gb is not None and measured_gb <= budget_gb,
            "measured_by": "cuda peak over load and batch-max runs" if peak is not None else "Expert.memory_bytes()",
        },
    }
    return worker, report


def _level_timings(workers: list[Worker], images: list[np.ndarray], reps: int, batch_max: bool) -> dict[str, float]:
    """The level as a request sees it: every expert at once, each on its own thread."""

    def run() -> None:
        futures = [w.submit(images[: w.expert.config.max_batch] if batch_max else images[:1]) for w in workers]
        for future in futures:
            future.result()

    return _timings(run, reps)


def run_levels(args: argparse.Namespace) -> dict[str, Any]:
    cascade = load_cascade(args.cascade)
    largest = max(e.max_batch for e in cascade.experts())
    images = mixed_images(max(largest, len(MIXED_SIZES)))
    memory = DeviceMemory(args.device)
    report: dict[str, Any] = {"mode": "levels", "cascade": str(args.cascade), "device": args.device,
                              "reps": args.reps, "image_sizes": [f"{w}x{h}" for w, h in MIXED_SIZES], "levels": {}}
    loaded: list[Any] = []
    try:
        for index, level in enumerate(cascade.levels, 1):
            experts, rows = [], {}
            for config in level.experts:
                if config.backend in ASYNC_BACKENDS:  # engines of their own: measured where they run
                    rows[config.name] = {"backend": config.backend, "skipped": "runs in its own server process"}
                    continue
                print(f"level {index} {level.name}: loading {config.name} ({config.backend}) on {args.device}",
                      flush=True)
                worker, rows[config.name] = _measure_expert(config, args.device, images, args.reps, memory)
                experts.append(worker)
                loaded.append(worker)
            entry: dict[str, Any] = {"name": level.name, "experts": rows}
            if experts:
                entry["batch1"] = _level_timings(experts, images, args.reps, batch_max=False)
                entry["batch_max"] = _level_timings(experts, images, args.reps, batch_max=True)
                entry["batch_max"]["sizes"] = {w.expert.name: min(w.expert.config.max_batch, len(images))
                                               for w in experts}
            report["levels"][str(index)] = entry
            if args.json:  # a step cut short by its time limit still leaves the levels it finished
                args.json.write_text(json.dumps(report, indent=2))
            print(f"level {index} {level.name}: batch 1 p50 {entry.get('batch1', {}).get('p50_ms', float('nan')):.1f}"
                  f" ms, batch max p50 {entry.get('batch_max', {}).get('p50_ms', float('nan')):.1f} ms", flush=True)
        report["device_allocated_gb"] = _gb(memory.allocated())
    finally:
        for worker in loaded:
            worker.close()
    return report


def add_parser(sub: Any) -> None:
    p = sub.add_parser("levels", help="per level: batch-1 and batch-max latency, memory per expert vs memory_gb")
    p.add_argument("--cascade", type=Path, required=True)
    p.add_argument("--device", default="cpu", help="cpu or cuda:N: every expert is loaded there")
    p.add_argument("--reps", type=int, default=10, help="timed runs per figure (after 2 untimed)")
    p.add_argument("--json", type=Path)
