"""Model-level benchmarks for sn72-bench (sn72_lab/bench.py): per-backend latency, batch-size finder, baselines.

Imported by sn72-bench (sn72_lab/bench.py), which runs these as its `backends`, `find-batch`,
`baseline` and `ceiling` modes; kept apart so each file stays small. Run `sn72-bench --help`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from cascade.config import DecodeConfig, ExpertConfig, load_cascade
from cascade.decode import decode


def decode_cost_ms(payloads: list[str]) -> float:
    """CPU decode cost per image on one thread (base64 + JPEG + checks), to see whether it limits."""
    limits = DecodeConfig()
    began = time.perf_counter()
    for payload in payloads:
        decode(payload, limits)
    return (time.perf_counter() - began) * 1000.0 / max(1, len(payloads))


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(480, 640), (720, 1280), (224, 224)]
    return [rng.integers(0, 256, (*shapes[i % 3], 3), dtype=np.uint8) for i in range(count)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time_batches(expert: Any, batch: int, reps: int) -> list[float]:
    images = _images(batch)
    for _ in range(2):
        expert.predict_batch(images)
    _sync(expert.device)
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        expert.predict_batch(images)  # returns host floats: the device work is finished
        times.append(time.perf_counter() - began)
    return times


def _reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        import gc

        import torch

        if torch.cuda.is_initialized():  # before the first expert nothing was allocated (and resetting fails)
            gc.collect()  # the previous expert's tensors, so its memory is not counted against this one
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def _load(config: ExpertConfig, device: str) -> Any:
    from cascade.experts.registry import build_expert

    expert = build_expert(config, device)
    expert.load()
    return expert


def run_backends(args: argparse.Namespace) -> dict[str, Any]:
    """Latency of each expert of a cascade at the given batch sizes (median and p99 of `reps`)."""
    report: dict[str, Any] = {"mode": "backends", "device": args.device}
    for config in load_cascade(args.cascade).experts():
        if config.backend in ("vlm_vllm", "vlm_remote") or args.expert not in (None, config.name):
            continue
        _reset_peak_memory(args.device)
        expert = _load(config, args.device)
        rows = {}
        for batch in args.batches:
            times = _time_batches(expert, batch, args.reps)
            median = statistics.median(times)
            rows[f"batch{batch}"] = {"median_ms": median * 1000, "p99_ms": float(np.percentile(times, 99)) * 1000,
                                     "images_per_s": batch / median}
        report[config.name] = {"backend": config.backend, "model": config.model, **rows}
        if args.device.startswith("cuda"):  # weights + the largest batch's activations: what memory_gb must cover
            import torch

            report[config.name]["peak_memory_gb"] = torch.cuda.max_memory_allocated(args.device) / 2**30
        expert.close()
    return report


def run_find_batch(args: argparse.Namespace) -> dict[str, Any]:
    """Per expert: the max_batch with the best throughput whose request p99 stays under the budget.

    Under saturation a request waits for the batch in progress and then its own: p99 latency is
    about twice the batch time's p99 plus max_wait; that is the figure compared with the budget.
    """
    configs = [c for c in load_cascade(args.cascade).experts() if args.expert in (None, c.name)]
    report: dict[str, Any] = {"mode": "find-batch", "device": args.device, "budget_ms": args.budget_ms}
    for config in configs:
        expert = _load(config, args.device)
        rows, best = [], None
        for batch in args.sizes:
            times = _time_batches(expert, batch, args.reps)
            p99_ms = float(np.percentile(times, 99)) * 1000
            request_p99_ms = 2 * p99_ms + config.max_wait_ms
            row = {"max_batch": batch, "images_per_s": batch / statistics.median(times),
                   "batch_p99_ms": p99_ms, "request_p99_ms": request_p99_ms}
            rows.append(row)
            if request_p99_ms <= args.budget_ms and (best is None or row["images_per_s"] > best["images_per_s"]):
                best = row
        report[config.name] = {"best": best, "tried": rows}
        expert.close()
    return report


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The subnet's reference miner: transformers `pipeline`, fp32, one PIL image at a time."""
    from PIL import Image
    from transformers import pipeline

    device = None if args.device == "cpu" else args.device
    classifier = pipeline("image-classification", model=str(args.model), device=device)
    images = [Image.fromarray(a) for a in _images(args.requests)]
    for image in images[:3]:
        classifier(image)
    latencies = []
    began = time.perf_counter()
    for image in images:
        t0 = time.perf_counter()
        classifier(image)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - began
    return {"mode": "baseline-pipeline", "device": args.device, "requests": len(images),
            "throughput_rps": len(images) / elapsed,
            "latency_ms": {"p50": float(np.percentile(latencies, 50)) * 1000,
                           "p99": float(np.percentile(latencies, 99)) * 1000}}


def run_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """The model's own ceiling: bf16 forward passes on ready tensors of `batch` images (no decode)."""
    import torch
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(str(args.model), dtype=torch.bfloat16)
    model = model.to(args.device).eval()
    size = model.config.image_size
    pixels = torch.randn(args.batch, 3, size, size, device=args.device, dtype=torch.bfloat16)
    with torch.inference_mode():
        for _ in range(3):
            model(pixel_values=pixels)
        _sync(args.device)
        began = time.perf_counter()
        for _ in range(args.reps):
            model(pixel_values=pixels)
        _sync(args.device)
    elapsed = time.perf_counter() - began
    return {"mode": "ceiling", "device": args.device, "batch": args.batch,
            "images_per_s": args.batch * args.reps / elapsed, "batch_ms": elapsed * 1000 / args.reps}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("backends", help="latency per expert at batch sizes")
    p.add_argument("--cascade", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--expert", default=None, help="only this expert (default: all)")
    p.add_argument("--batches", type=_ints, default=[1, 32])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json", type=Path)
    p = sub.add_parser("find-batch", help="best max_batch per expert under a latency budget")
    p.add_argument("--cascade", type=Path, required=True)
    p.add_argument("--expert", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget-ms", type=float, default=100.0)
    p.add_argument("--sizes", type=_ints, default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", type=Path)
    p = sub.add_parser("baseline", help="natix-style pipeline, fp32, one image at a time")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--json", type=Path)
    p = sub.add_parser("ceiling", help="bf16 forward throughput on ready tensors")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json", type=Path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    runners = {"backends": run_backends, "find-batch": run_find_batch, "baseline": run_baseline,
               "ceiling": run_ceiling}
    return runners[args.mode](args)


if __name__ == "__main__":
    print(__doc__.strip())
    print("\nusage: sn72-bench {backends,find-batch,baseline,ceiling} ...  (see sn72-bench --help)")
