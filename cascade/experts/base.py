"""The interface every expert backend implements, and what they share (device, dtype, dummy inputs).

An expert takes a batch of decoded RGB images (HxWx3 uint8, any sizes) and returns one probability
of roadwork per image, doing its own preprocessing. Synchronous backends implement `predict_batch`
and are run on a dedicated thread per replica; backends that talk to an async engine or a server
set `is_async` and implement `predict_async`, which also receives the batch's deadline.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from cascade.config import ExpertConfig


class ExpertError(RuntimeError):
    """An expert could not be loaded or could not answer a batch."""


class Expert(abc.ABC):
    """One loaded model replica on one device."""

    is_async: ClassVar[bool] = False

    def __init__(self, config: ExpertConfig, device: str) -> None:
        self.config = config
        self.device = device
        self.name = config.name
        self.options: Any = config.typed_options()

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights and processors onto `self.device`."""

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        """One P(roadwork) in [0, 1] per image (synchronous backends)."""
        raise NotImplementedError(f"{type(self).__name__} has no synchronous predict")

    async def predict_async(self, images: Sequence[np.ndarray], deadline_s: float) -> list[float]:
        """One P(roadwork) per image (async backends); work still running at `deadline_s` is aborted."""
        raise NotImplementedError(f"{type(self).__name__} has no asynchronous predict")

    def input_side(self) -> int | None:
        """The largest image side this expert looks at after its own resize (None: full resolution).

        The engine decodes JPEGs no larger than every expert needs (`DecodeConfig.reduce_jpeg`).
        """
        return None

    def memory_bytes(self) -> int:
        """Device memory this replica holds (parameters and buffers; 0 where not measurable)."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release the model (the process may keep running with other experts)."""

    def warmup_batches(self) -> list[list[np.ndarray]]:
        """Dummy batches run at load: the smallest and largest batch, of mixed sizes."""
        sizes = [(224, 224), (480, 640), (720, 1280)]
        rng = np.random.default_rng(0)

        def image(i: int) -> np.ndarray:
            h, w = sizes[i % len(sizes)]
            return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

        batches = [[image(0)]]
        if self.config.max_batch > 1:
            batches.append([image(i) for i in range(self.config.max_batch)])
        return batches


def torch_dtype(name: str, device: str) -> Any:
    """The torch dtype of a config's dtype name; 'auto' is bfloat16 on CUDA and float32 on the CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def parameter_bytes(module: Any) -> int:
    """Bytes held by a torch module's parameters and buffers."""
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        total += tensor.numel() * tensor.element_size()
    return total


def check_probabilities(name: str, values: Sequence[float], expected: int) -> list[float]:
    """Outputs are counted against inputs and must be finite probabilities."""
    out = [float(v) for v in values]
    if len(out) != expected:
        raise ExpertError(f"expert {name} returned {len(out)} probabilities for {expected} images")
    for value in out:
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ExpertError(f"expert {name} returned {value}, outside [0, 1]")
    return out
