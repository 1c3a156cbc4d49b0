"""What GPU JPEG decoding saves: CPU per request in the decode threads, decode+resize per image, the engine.

    sn72-decode-bench [--json OUT.json]                 # every section the machine can run
    sn72-decode-bench --sections host                   # CPU only: the decode thread's work per request

Sections (docs/decoding.md):
  host    per request, in a decode thread: PIL (reduced DCT scale for a 224 input) against the header checks
          that are all a deferred JPEG costs there (CPU seconds, `time.thread_time`)
  device  per image, decode + resize to 224 + normalise on the GPU, batches of 1/32/128 640x480 frames (and
          batch 32 of 1920x1080 and 4000x3000): nvJPEG in the batch against PIL(draft) on the host then the
          upload; wall time and the calling thread's CPU time
  engine  a one-level engine (ViT-B/16 with random weights, or --model), closed loop of distinct JPEGs,
          decode.device off against auto: requests/s, p50/p99, late answers, process CPU per request
Images are photo-like synthetic frames saved as validators send them (PIL, quality 75, 4:2:0).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SECTIONS = ("host", "device", "engine")


def frame(seed: int, width: int, height: int) -> bytes:
    """A smooth photo-like frame as a validator's JPEG (PIL's defaults: quality 75, 4:2:0)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    small.resize((width, height), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 640x480, got {text!r}") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"image size {text} is too small (16x16 at least)")
    return width, height


def host_section(images: int, frame_size: tuple[int, int], side: int) -> dict[str, Any]:
    from cascade.config import DecodeConfig
    from cascade.decode import DeviceJpeg, decode_image, decode_or_defer

    limits = DecodeConfig()
    datas = [frame(i, *frame_size) for i in range(images)]
    out: dict[str, Any] = {"images": images, "size": f"{frame_size[0]}x{frame_size[1]}", "input_side": side}
    for name, step in (("pil_reduced", lambda d: decode_image(d, limits, side)),
                       ("deferred_header_only", lambda d: decode_or_defer(d, limits, side))):
        step(datas[0])  # imports and first-call costs out of the figure
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        results = [step(d) for d in datas]
        cpu_s, wall_s = time.thread_time() - cpu0, time.perf_counter() - wall0
        out[name] = {"cpu_ms_per_request": cpu_s / images * 1000, "wall_ms_per_request": wall_s / images * 1000}
    assert isinstance(results[0], DeviceJpeg), "a validator-like JPEG should be deferred"
    out["cpu_ms_saved_per_request"] = out["pil_reduced"]["cpu_ms_per_request"] - \
        out["deferred_header_only"]["cpu_ms_per_request"]
    return out


def _timed(run: Callable[[], Any], reps: int, sync: Callable[[], None]) -> tuple[float, float]:
    """(median wall seconds, median calling-thread CPU seconds) of `run`, after one warm-up call."""
    run()
    sync()
    walls, cpus = [], []
    for _ in range(reps):
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        run()
        sync()
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.thread_time() - cpu0)
    return statistics.median(walls), statistics.median(cpus)


def device_section(device: str, runs: list[tuple[tuple[int, int], list[int]]], reps: int,
                   side: int) -> list[dict[str, Any]]:
    import torch

    from cascade.config import DecodeConfig
    from cascade.decode import DeviceJpeg, decode_image
    from cascade.experts.jpeg import materialise, nvjpeg
    from cascade.experts.preprocess import batch_tensor

    limits = DecodeConfig(device_max_pixels=1 << 31)  # measure every size on both paths
    mean, std = [0.5] * 3, [0.5] * 3

    def sync() -> None:
        torch.cuda.synchronize(device)

    rows = []
    for (width, height), batches in runs:
        pool = [frame(i, width, height) for i in range(max(batches))]
        for count in batches:
            datas = pool[:count]
            jpegs = [DeviceJpeg(d, (width, height), 1, limits) for d in datas]

            def on_device(jpegs: list[DeviceJpeg] = jpegs) -> Any:
                images = materialise(jpegs, device, nvjpeg).images
                return batch_tensor(images, (side, side), mean, std, device, torch.bfloat16)

            def pil_then_upload(datas: list[bytes] = datas) -> Any:
                arrays = [decode_image(d, limits, side).image for d in datas]
                return batch_tensor(arrays, (side, side), mean, std, device, torch.bfloat16)

            row: dict[str, Any] = {"size": f"{width}x{height}", "batch": count}
            for name, run in (("nvjpeg", on_device), ("pil_draft_upload", pil_then_upload)):
                wall_s, cpu_s = _timed(run, reps, sync)
                row[name] = {"wall_ms_per_image": wall_s / count * 1000, "cpu_ms_per_image": cpu_s / count * 1000,
                             "wall_ms_per_batch": wall_s * 1000}
            rows.append(row)
            print(f"  {row['size']:>9} batch {count:>3}: nvJPEG {row['nvjpeg']['wall_ms_per_image']:.3f} ms/img "
                  f"(CPU {row['nvjpeg']['cpu_ms_per_image']:.3f}), PIL+upload "
                  f"{row['pil_draft_upload']['wall_ms_per_image']:.3f} ms/img "
                  f"(CPU {row['pil_draft_upload']['cpu_ms_per_image']:.3f})", flush=True)
    return rows


async def _closed_loop(submit: Callable[[int], Any], total: int, concurrency: int) -> None:
    indices = iter(range(total))

    async def client() -> None:
        for i in indices:
            await asyncio.wrap_future(submit(i))

    await asyncio.gather(*(client() for _ in range(concurrency)))


def _drive(engine: Any, payloads: list[str], concurrency: int, budget_s: float) -> tuple[list[float], int]:
    """Closed loop of `concurrency` clients over `payloads`: (latency of each request in s, late answers)."""
    from cascade.request import Job

    latencies = [0.0] * len(payloads)
    late = [0]

    def submit(i: int) -> Any:
        now = time.monotonic()
        deadline_s = now + budget_s
        future = engine.submit(Job(payload=payloads[i], hotkey=f"hk{i % 8}", arrival_s=now, deadline_s=deadline_s))

        def done(_future: Any) -> None:
            finished = time.monotonic()
            latencies[i] = finished - now
            late[0] += finished > deadline_s

        future.add_done_callback(done)
        return future

    asyncio.run(_closed_loop(submit, len(payloads), concurrency))
    return latencies, late[0]


def engine_section(model: Path, device: str, requests: int, concurrency: int, workers: int,
                   budget_s: float) -> dict[str, Any]:
    import base64

    from cascade.config import CascadeConfig, EngineConfig, ExpertConfig, LevelConfig, SchedulerConfig
    from cascade.engine import Engine
    from cascade.process_settings import start_with_process_settings

    expert = ExpertConfig(name="vit", backend="hf_classifier", model=str(model), device=device, dtype="bfloat16",
                          max_batch=128, max_wait_ms=3.0, warmup_batches=3, options={"positive_labels": ["Roadwork"]})
    cascade = CascadeConfig(version="decode-bench", levels=[LevelConfig(name="l1", experts=[expert], exit_margin=0.0)])
    scheduler = SchedulerConfig(cache_size=0, max_in_flight=max(256, concurrency), decode_workers=workers,
                                max_in_flight_per_hotkey=max(256, concurrency))
    payloads = [base64.b64encode(frame(i, 640, 480)).decode() for i in range(requests)]
    out: dict[str, Any] = {"model": str(model), "requests": requests, "concurrency": concurrency,
                           "decode_workers": workers}
    for mode in ("off", "auto"):
        engine = Engine(EngineConfig(cascade=cascade, scheduler=scheduler, decode={"device": mode}))
        start_with_process_settings(engine)  # as the miner starts it
        try:
            deferred = engine.serving.defer_jpegs
            cpu0, wall0 = time.process_time(), time.monotonic()
            latencies, late = _drive(engine, payloads, concurrency, budget_s)
            wall_s, cpu_s = time.monotonic() - wall0, time.process_time() - cpu0
        finally:
            engine.close()
        ordered = sorted(latencies)
        out[mode] = {
            "jpegs_deferred_to_the_gpu": deferred,
            "throughput_rps": requests / wall_s,
            "p50_ms": ordered[len(ordered) // 2] * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
            "late_answers": late,
            "process_cpu_ms_per_request": cpu_s / requests * 1000,
        }
        print(f"  decode.device={mode}: {out[mode]['throughput_rps']:.0f} req/s, p50 {out[mode]['p50_ms']:.1f} ms, "
              f"p99 {out[mode]['p99_ms']:.1f} ms, late {out[mode]['late_answers']}, process CPU "
              f"{out[mode]['process_cpu_ms_per_request']:.2f} ms/request (JPEGs deferred: {deferred})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sn72-decode-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="host,device,engine", help="comma-separated: host, device, engine")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--device", default="cuda:0", help="GPU for the device and engine sections")
    parser.add_argument("--batches", default="1,32,128", help="device section: batch sizes of --size frames")
    parser.add_argument("--size", type=size, default=(640, 480), help="device section: WxH of the frames")
    parser.add_argument("--large", type=lambda t: [size(s) for s in t.split(",") if s],
                        default=[(1920, 1080), (4000, 3000)],
                        help="device section: larger WxH frames, timed at batch 32 only ('' for none)")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per device measurement (median)")
    parser.add_argument("--side", type=int, default=224, help="the model input side (ViT-B/16: 224)")
    parser.add_argument("--images", type=int, default=200, help="host section: distinct images")
    parser.add_argument("--model", type=Path, help="engine section: an image-classifier folder (default: ViT-B/16 "
                        "with random weights, built in a temporary folder)")
    parser.add_argument("--requests", type=int, default=4000, help="engine section: distinct requests per mode")
    parser.add_argument("--concurrency", type=int, default=256, help="engine section: clients")
    parser.add_argument("--decode-workers", type=int, default=8, help="engine section: decode threads")
    parser.add_argument("--budget-s", type=float, default=8.4, help="engine section: deadline of each request")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if args.model is not None and not args.model.is_dir():
        parser.error(f"--model {args.model} is not a folder")

    import torch

    report: dict[str, Any] = {"torch": torch.__version__}
    cuda = torch.cuda.is_available()
    if "host" in sections:
        print(f"host: {args.images} distinct 640x480 JPEGs, the decode thread's work per request", flush=True)
        report["host"] = host_section(args.images, (640, 480), args.side)
        h = report["host"]
        print(f"  PIL at reduced scale {h['pil_reduced']['cpu_ms_per_request']:.3f} ms CPU, header checks only "
              f"{h['deferred_header_only']['cpu_ms_per_request']:.3f} ms CPU: "
              f"{h['cpu_ms_saved_per_request']:.3f} ms saved per request", flush=True)
    gpu_sections = [s for s in sections if s != "host"]
    if gpu_sections and not cuda:
        print(f"no CUDA device here: skipped {', '.join(gpu_sections)}", flush=True)
    elif gpu_sections:
        import torchvision

        report["gpu"] = torch.cuda.get_device_name(args.device)
        report["torchvision"] = torchvision.__version__
        if "device" in sections:
            print(f"device ({report['gpu']}): decode + resize to {args.side} per image", flush=True)
            runs = [(args.size, batches)] + [(large, [32]) for large in args.large]
            report["device"] = device_section(args.device, runs, args.reps, args.side)
        if "engine" in sections:
            with tempfile.TemporaryDirectory(prefix="sn72-decode-bench-") as scratch:  # the built model, removed after
                model = args.model
                if model is None:
                    from sn72_lab.tiny_models import build_vit_b16

                    model = build_vit_b16(Path(scratch) / "vit-b16")
                print(f"engine: {args.requests} distinct 640x480 JPEGs, {args.concurrency} clients", flush=True)
                report["engine"] = engine_section(model, args.device, args.requests, args.concurrency,
                                                  args.decode_workers, args.budget_s)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
