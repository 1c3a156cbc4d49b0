"""`sn72-bench stages`: where a classifier expert's batch-1 time goes, stage by stage, on its own device.

The engine's batch-1 latency is mostly the worker's own call (`predict_batch`: the JPEG to the device, nvJPEG, resize
and normalise, the graphed forward, the answer back to the host). This loads the first expert of the cascade's first
level through the miner's own registry and device-decoder set-up (nvJPEG where the device allows, CUDA graphs as
configured), warms it up, and times on distinct JPEGs of `--image-size`:

- `predict_batch`: the call as the worker makes it, end to end (the host floats at the end wait for the device);
- each stage alone, the device synchronised after each (`bytes_to_tensor`, `decode`, `preprocess`, `forward`: the
  model and the answer's head, softmax over the roadwork labels, as one graph; `answer`: the copy to the host): the
  sum is above the whole call, as every stage's device work is waited for;
- `forward_device`: the forward's device time alone, the head included (CUDA events around it), the part no host
  change can shorten;
- with `compile_max_batch` set: the whole call against a twin without compiled buckets, alternated (`compile_ab`);
- other ways to decode one JPEG for the same batch (`decode_alternatives`): torchvision's nvJPEG with one tensor
  instead of a list, libjpeg-turbo on the host plus the upload, PIL (the miner's host path) plus the upload.

Figures in milliseconds: p50, p90 and the mean over `--reps` calls after `--warmup` untimed ones, each call on the next
image. `stages_sum_p50` adds the stages' medians: each stage waits for its device work, the whole call does not, so
the sum can be above the call (device work the call overlaps with host work) or below it (the call's own bookkeeping
between stages: the decoded batch's checks, the answers put back in order). On a CPU the JPEGs are decoded by PIL
before the timing (as the miner's decode threads do), so `decode` is ~0; there, on a busy machine, set
OMP_NUM_THREADS=1 (torch's thread pool stalls when the cores are oversubscribed, tens of milliseconds at a time).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from sn72_tools.client import percentiles

STAGES = ("bytes_to_tensor", "decode", "preprocess", "forward", "answer")


def summary(times_ms: Sequence[float]) -> dict[str, float]:
    """p50, p90 and mean of a list of millisecond figures."""
    return {**percentiles(times_ms, (50, 90)), "mean": statistics.fmean(times_ms)}


def timed(run: Callable[[int], Any], reps: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    """Milliseconds of `run(i)` for i in range(reps), after `warmup` untimed calls; `sync` before each start."""
    for i in range(warmup):
        run(i)
    sync()
    times = []
    for i in range(reps):
        sync()
        began = time.perf_counter()
        run(i)
        sync()
        times.append((time.perf_counter() - began) * 1000.0)
    return times


def run_stages(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from cascade.config import DecodeConfig, load_cascade
    from cascade.decode import device_jpeg_or_none
    from cascade.experts.base import warm_up
    from cascade.experts.jpeg import enable_device_jpeg, materialise
    from cascade.experts.preprocess import batch_tensor
    from cascade.experts.registry import build_expert
    from sn72_lab.bench import payloads

    config = load_cascade(args.cascade).levels[0].experts[0]
    if args.compile_max_batch is not None:  # the same expert with or without compiled buckets, whatever the file says
        config = config.model_copy(update={"options": {**config.options, "compile_max_batch": args.compile_max_batch}})
    if config.backend != "hf_classifier":
        raise SystemExit(f"stages times an hf_classifier expert; the first expert of {args.cascade} is "
                         f"{config.backend!r}")
    device = args.device
    cuda = device.startswith("cuda")
    expert: Any = build_expert(config, device)
    expert.load()
    note = enable_device_jpeg(expert, "auto") if cuda else None
    warm_up(expert)
    limits = DecodeConfig()
    count = args.reps + args.warmup
    jpegs = [device_jpeg_or_none(base64.b64decode(p), limits, expert.input_side())
             for p in payloads(count, args.image_size)]
    if any(j is None for j in jpegs):
        raise SystemExit("a generated JPEG was not left for the device decoder (see cascade/decode.py)")
    images: list[Any] = jpegs if expert.jpeg_decoder is not None else [j.host_pixels() for j in jpegs]  # type: ignore[union-attr]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    report: dict[str, Any] = {
        "mode": "stages", "cascade": str(args.cascade), "expert": config.name, "device": device,
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu", "decoder": note,
        "image_size": list(args.image_size), "reps": args.reps, "unit": "ms",
        "cuda_graphs": bool(cuda and expert.options.cuda_graphs),
        "dtype": str(expert.dtype), "compiled_buckets": getattr(expert.probabilities_of, "compiled_buckets", None),
    }
    report["predict_batch"] = summary(timed(partial(_one, expert, images), args.reps, args.warmup, lambda: None))
    if cuda and expert.options.compile_max_batch > 0:
        report["compile_ab"] = _compile_ab(expert, config, images, args)

    staged: dict[str, list[float]] = {name: [] for name in STAGES}
    marks: list[float] = []

    def mark() -> None:
        sync()
        marks.append(time.perf_counter())

    for i in range(count):
        marks.clear()
        marks.append(time.perf_counter())

        with torch.inference_mode():
            if expert.jpeg_decoder is not None:
                encoded = torch.frombuffer(bytearray(images[i].data), dtype=torch.uint8)
                mark()
                pixels = expert.jpeg_decoder([encoded], device)
                mark()
            else:
                mark()
                pixels = materialise([images[i]], device, None).images
                mark()
            batch = batch_tensor(pixels, expert.size_hw, expert.mean, expert.std, device, expert.dtype,
                                 expert.rescale, expert.channels_last, resize=expert.resize)
            mark()
            probabilities = expert.probabilities_of(batch)
            mark()
            probabilities.cpu().tolist()
            mark()
        if i >= args.warmup:
            for name, began, ended in zip(STAGES, marks[:-1], marks[1:], strict=True):
                staged[name].append((ended - began) * 1000.0)
    report["stages"] = {name: summary(times) for name, times in staged.items()}
    report["stages_sum_p50"] = sum(report["stages"][name]["p50"] for name in STAGES)

    if cuda:
        report["forward_device"] = summary(device_times(expert.probabilities_of, batch, args.reps))
        report["decode_alternatives"] = _decode_alternatives(jpegs, device, args.reps, args.warmup, sync)
    return report


def _one(expert: Any, images: Sequence[Any], i: int) -> None:
    expert.predict_batch([images[i]])


def _compile_ab(expert: Any, config: Any, images: Sequence[Any], args: argparse.Namespace) -> dict[str, Any]:
    """`predict_batch` at batch 1 of the expert as configured and of a twin without compiled buckets, the same images,
    alternated in `args.rounds` rounds (drift hits both alike)."""
    from cascade.experts.jpeg import enable_device_jpeg
    from cascade.experts.registry import build_expert

    twin: Any = build_expert(config.model_copy(update={"options": {**config.options, "compile_max_batch": 0}}),
                             args.device)
    twin.load()
    enable_device_jpeg(twin, "auto")
    sides = {"compiled": expert, "eager_graphs": twin}
    rounds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, side in sides.items():
            times = timed(partial(_one, side, images), args.reps, args.warmup, lambda: None)
            rounds[name].append(summary(times)["p50"])
    twin.close()
    return {"rounds_p50": rounds, "median_p50": {name: statistics.median(v) for name, v in rounds.items()}}


def device_times(forward: Callable[[Any], Any], batch: Any, reps: int, warmup: int = 0) -> list[float]:
    """Device milliseconds of `forward(batch)` alone (CUDA events), the batch already on the device, after `warmup`
    untimed calls (scripts/forward_variants.py uses this too)."""
    import torch

    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            forward(batch)
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward(batch)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return times


def _decode_alternatives(jpegs: Sequence[Any], device: str, reps: int, warmup: int,
                         sync: Callable[[], None]) -> dict[str, dict[str, float]]:
    """One JPEG to a 3xHxW uint8 tensor on `device`, four ways (each to the device, synchronised)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from cascade.experts.jpeg import nvjpeg

    target = torch.device(device)

    def encoded(i: int) -> torch.Tensor:
        return torch.frombuffer(bytearray(jpegs[i].data), dtype=torch.uint8)

    def nvjpeg_single(i: int) -> None:
        with torch.cuda.device(target):
            decode_jpeg(encoded(i), mode=ImageReadMode.RGB, device=target)

    def host_turbo(i: int) -> None:
        decode_jpeg(encoded(i), mode=ImageReadMode.RGB).to(target)

    def host_pil(i: int) -> None:
        torch.from_numpy(jpegs[i].host_pixels()).to(target)

    ways = {"nvjpeg_list": lambda i: nvjpeg([encoded(i)], device), "nvjpeg_single": nvjpeg_single,
            "host_libjpeg_turbo": host_turbo, "host_pil": host_pil}
    return {name: summary(timed(run, reps, warmup, sync)) for name, run in ways.items()}


def add_parser(sub: Any) -> None:
    from sn72_lab.bench import size

    p = sub.add_parser("stages", help="a classifier expert's batch-1 time, stage by stage, on its device")
    p.add_argument("--cascade", type=Path, required=True, help="its first level's first expert is timed")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--image-size", type=size, default=(640, 480), help="WxH of the generated JPEGs")
    p.add_argument("--reps", type=int, default=200, help="timed calls per figure")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls before each figure")
    p.add_argument("--compile-max-batch", type=int, default=None, metavar="N",
                   help="the expert's options.compile_max_batch for this run (default: as the cascade file says; "
                   "N > 0 on CUDA also times an uncompiled twin, alternated)")
    p.add_argument("--rounds", type=int, default=3,
                   help="with compiled buckets: alternated rounds of the expert and its uncompiled twin")
    p.add_argument("--json", type=Path)
