"""Experts with no model for benchmarks: the request path measured alone, or in front of a stand-in device.

Its own module (not `sn72_lab.bench`, which runs as `__main__`): a worker process imports the factory by
name (`sn72-bench engine --null-experts --worker-process`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cascade.config import ExpertConfig


def null_factory(config: ExpertConfig, device: str, batch_ms: float = 0.0, image_ms: float = 0.0) -> Any:
    """An expert with no model: JPEGs stay encoded (as for nvJPEG experts) and every answer is 0.9.

    `engine --null-experts` measures the request path alone (admission, base64, hash, header checks, batching,
    thread and event-loop hand-offs): the ceiling no model can lift in this process. With `batch_ms`/`image_ms`
    (`--null-device-ms`) each batch takes that long without the CPU (a sleep releases the interpreter lock, as a
    GPU's kernels do): a stand-in device, so the request path in front of a GPU-like expert is measured on a
    machine without one.
    """
    from cascade.experts.base import Expert

    class NullExpert(Expert):
        def load(self) -> None:
            self.jpeg_decoder = lambda encoded, device: encoded  # takes JPEGs still encoded; never called

        def predict_batch(self, images: Sequence[Any]) -> list[float]:
            if batch_ms or image_ms:  # the stand-in device's work, waited for as an expert waits for its GPU
                began = time.perf_counter()
                time.sleep((batch_ms + image_ms * len(images)) / 1000.0)
                self.stages = {"wait": time.perf_counter() - began}
            return [0.9] * len(images)

        def memory_bytes(self) -> int:
            return 0

    return NullExpert(config, device)
