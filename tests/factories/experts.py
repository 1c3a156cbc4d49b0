"""Factories for backend tests: random images of given sizes, and an expert loaded through the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cascade.config import ExpertConfig
from cascade.experts.base import Expert
from cascade.experts.registry import build_expert

E = TypeVar("E", bound=Expert)


def make_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    """Random RGB uint8 images of the given (height, width) sizes."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def load_expert(kind: type[E], backend: str, model: Path, device: str = "cpu", **overrides: Any) -> E:
    """An expert of `backend` built by the registry (the hub-id path) from a local model, loaded."""
    fields: dict[str, Any] = {"name": backend, "backend": backend, "model": str(model), "device": device}
    fields.update(overrides)
    expert = build_expert(ExpertConfig(**fields), device)
    assert isinstance(expert, kind)
    expert.load()
    return expert


def overlap_probe(config: ExpertConfig, device: str) -> Expert:
    """A worker-process stand-in whose first batch's device work lasts until a second batch starts (at most 5 s):
    its answers say whether the worker started the next batch while this one ran (0.75) or only after (0.25). Other
    batches answer 0.5. Module-level, so a worker process can import it by name; give it `warmup_batches: 0`."""
    import threading
    import time
    from collections.abc import Callable, Sequence

    class OverlapProbe(Expert):
        def load(self) -> None:
            self.starts = 0
            self.second_started = threading.Event()

        def predict_batch(self, images: Sequence[Any]) -> Sequence[float]:
            return self.start_batch(images)()  # type: ignore[return-value]

        def start_batch(self, images: Sequence[Any]) -> Callable[[], Sequence[float]]:
            self.starts += 1
            if self.starts == 1:
                time.sleep(0.2)  # a batch's host work: the second batch, sent with it, is waiting by the end of it
                def first() -> list[float]:
                    overlapped = self.second_started.wait(5.0)
                    return [0.75 if overlapped else 0.25] * len(images)

                return first
            self.second_started.set()
            return lambda: [0.5] * len(images)

        def memory_bytes(self) -> int:
            return 0

    return OverlapProbe(config, device)


def thread_probe(config: ExpertConfig, device: str) -> Expert:
    """A worker-process stand-in whose answers say which thread finished the batch: 1.0 the worker's main thread (the
    one that started it), 0.0 another. Module-level for a worker process to import; give it `warmup_batches: 0`."""
    import threading
    from collections.abc import Callable, Sequence

    class ThreadProbe(Expert):
        def load(self) -> None:
            pass

        def predict_batch(self, images: Sequence[Any]) -> Sequence[float]:
            return self.start_batch(images)()  # type: ignore[return-value]

        def start_batch(self, images: Sequence[Any]) -> Callable[[], Sequence[float]]:
            started_on = threading.current_thread()
            return lambda: [1.0 if threading.current_thread() is started_on else 0.0] * len(images)

        def memory_bytes(self) -> int:
            return 0

    return ThreadProbe(config, device)
