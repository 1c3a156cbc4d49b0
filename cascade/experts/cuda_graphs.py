"""Captured CUDA graphs of a fixed-shape forward pass, one per batch bucket.

A ViT-B/16 at batch 1 spends most of its GPU time launching kernels; replaying a captured graph
launches them all at once. Batches are padded up to the next bucket (powers of two up to
`max_batch`), copied into the bucket's static input, replayed, and the first rows of the static
output are returned. Anything that cannot be captured falls back to the eager forward.

A graph still runs one kernel per operation, one after another: at batch 1 a ViT-B/16's ~165 kernels took 1.3-1.6 ms
of device time on an H100 for ~0.7 ms of kernel work (`sn72-bench stages`, scripts/forward_variants.py). Buckets up to
`compile_max_batch` (off unless set) are captured from a `torch.compile`d forward instead: 1.0 ms there, with more
kernels and attention in fp32 (docs/performance.md, "Where batch 1 goes"), at 9-51 s of load for three buckets.
Compiling is an optimisation too: a model inductor cannot take whole keeps the eager forward for every bucket (logged).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch
from loguru import logger

Forward = Callable[[torch.Tensor], torch.Tensor]

# One capture stream per device for the life of the process. cuBLAS keeps a workspace (tens of MiB on Hopper)
# for every stream it has run on until the process exits, and `torch.cuda.Stream()` hands out a different
# pooled stream each time: a fresh stream per capture left one more workspace on the device at every hot reload.
_capture_streams: dict[str, torch.cuda.Stream] = {}
_streams_lock = threading.Lock()
_capture_lock = threading.Lock()


def capture_stream(device: str) -> torch.cuda.Stream:
    key = str(torch.device(device))
    with _streams_lock:
        if key not in _capture_streams:
            _capture_streams[key] = torch.cuda.Stream(device=device)
        return _capture_streams[key]


def bucket_sizes(max_batch: int) -> list[int]:
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch)
    return sizes


class GraphedForward:
    """Replays `forward` for batches up to `max_batch`; falls back to eager beyond that."""

    def __init__(self, forward: Forward, sample_shape: tuple[int, ...], max_batch: int, device: str,
                 dtype: torch.dtype, channels_last: bool = False, compile_max_batch: int = 0) -> None:
        self.forward = forward
        self.buckets = bucket_sizes(max_batch)
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.compiled_buckets: list[int] = []  # captured from the compiled forward
        # Kept with the graphs, as the eager forward is. NOTE: dynamo keys its compiled code by the forward's code
        # object, so in one process every reload of the same backend compiles again and counts towards dynamo's
        # recompile limit; past it the capture below falls back to the eager forward (logged). A worker process
        # (`worker: process`) loads each model in a fresh process.
        self.compiled_forward = torch.compile(forward, dynamic=False, fullgraph=True) if compile_max_batch > 0 else None
        fused = self.compiled_forward
        compile_s = 0.0
        with _capture_lock:  # one capture at a time on a device's shared capture stream
            pool = torch.cuda.graph_pool_handle()
            side = capture_stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.inference_mode(), torch.cuda.stream(side):
                for size in sorted(self.buckets, reverse=True):  # largest first: smaller graphs reuse its pool
                    static = torch.zeros((size, *sample_shape), device=device, dtype=dtype)
                    if channels_last:
                        static = static.contiguous(memory_format=torch.channels_last)
                    run = forward
                    if fused is not None and size <= compile_max_batch:
                        began = time.monotonic()
                        try:
                            fused(static)  # compiles for this shape
                            run = fused
                            self.compiled_buckets.insert(0, size)
                        except Exception as exc:  # noqa: BLE001 - the eager forward stays correct
                            logger.warning("torch.compile could not take the forward ({}: {}); every batch bucket "
                                           "runs the eager one", type(exc).__name__, str(exc).split("\n")[0][:300])
                            fused = None
                        compile_s += time.monotonic() - began
                    for _ in range(2):  # kernels selected and lazily initialised before capture
                        run(static)
                    graph = torch.cuda.CUDAGraph()
                    # thread_local: a hot reload captures while other replicas' threads keep serving on the device;
                    # the default ("global") mode would fail their allocations and copies during the capture.
                    with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
                        out = run(static)
                    self.inputs[size], self.outputs[size], self.graphs[size] = static, out, graph
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.synchronize(device)
        compiled = f"; compiled buckets {self.compiled_buckets} ({compile_s:.1f} s)" if self.compiled_buckets else ""
        logger.info("captured CUDA graphs for batch buckets {}{}", self.buckets, compiled)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        size = next((b for b in self.buckets if b >= n), None)
        if size is None:
            return self.forward(batch)
        self.inputs[size][:n].copy_(batch)
        self.graphs[size].replay()
        return self.outputs[size][:n].clone()


def try_graph(forward: Forward, sample_shape: tuple[int, ...], max_batch: int, device: str,
              dtype: torch.dtype, channels_last: bool = False, compile_max_batch: int = 0) -> Forward:
    """A graphed forward on CUDA (buckets up to `compile_max_batch` compiled first), or the eager one where capture is
    impossible (logged)."""
    if not device.startswith("cuda"):
        return forward
    try:
        return GraphedForward(forward, sample_shape, max_batch, device, dtype, channels_last, compile_max_batch)
    except Exception as exc:  # noqa: BLE001 - capture is an optimisation: eager stays correct
        logger.warning("CUDA graph capture failed ({!r}); running eagerly", exc)
        return forward
