"""Captured CUDA graphs of a fixed-shape forward pass, one per batch bucket.

A ViT-B/16 at batch 1 spends most of its GPU time launching kernels; replaying a captured graph
launches them all at once. Batches are padded up to the next bucket (powers of two up to
`max_batch`), copied into the bucket's static input, replayed, and the first rows of the static
output are returned. Anything that cannot be captured falls back to the eager forward.
"""

from __future__ import annotations

import threading
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
                 dtype: torch.dtype, channels_last: bool = False) -> None:
        self.forward = forward
        self.buckets = bucket_sizes(max_batch)
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        with _capture_lock:  # one capture at a time on a device's shared capture stream
            pool = torch.cuda.graph_pool_handle()
            side = capture_stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.inference_mode(), torch.cuda.stream(side):
                for size in sorted(self.buckets, reverse=True):  # largest first: smaller graphs reuse its pool
                    static = torch.zeros((size, *sample_shape), device=device, dtype=dtype)
                    if channels_last:
                        static = static.contiguous(memory_format=torch.channels_last)
                    for _ in range(2):  # kernels selected and lazily initialised before capture
                        forward(static)
                    graph = torch.cuda.CUDAGraph()
                    # thread_local: a hot reload captures while other replicas' threads keep serving on the device;
                    # the default ("global") mode would fail their allocations and copies during the capture.
                    with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
                        out = forward(static)
                    self.inputs[size], self.outputs[size], self.graphs[size] = static, out, graph
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.synchronize(device)
        logger.info("captured CUDA graphs for batch buckets {}", self.buckets)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        size = next((b for b in self.buckets if b >= n), None)
        if size is None:
            return self.forward(batch)
        self.inputs[size][:n].copy_(batch)
        self.graphs[size].replay()
        return self.outputs[size][:n].clone()


def try_graph(forward: Forward, sample_shape: tuple[int, ...], max_batch: int, device: str,
              dtype: torch.dtype, channels_last: bool = False) -> Forward:
    """A graphed forward on CUDA, or the eager one where capture is impossible (logged)."""
    if not device.startswith("cuda"):
        return forward
    try:
        return GraphedForward(forward, sample_shape, max_batch, device, dtype, channels_last)
    except Exception as exc:  # noqa: BLE001 - capture is an optimisation: eager stays correct
        logger.warning("CUDA graph capture failed ({!r}); running eagerly", exc)
        return forward
