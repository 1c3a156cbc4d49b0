"""The interface every expert backend implements, and what they share (device, dtype, dummy inputs).

An expert takes a batch of decoded RGB images (HxWx3 uint8, any sizes) and returns one probability
of roadwork per image, doing its own preprocessing. Synchronous backends implement `predict_batch`
and are run on a dedicated thread per replica; backends that talk to an async engine or a server
set `is_async` and implement `predict_async`, which also receives the batch's deadline.

A backend that sets `decodes_jpeg` may also be handed checked, still-encoded JPEGs (`DeviceJpeg`) once
the engine gave it a `jpeg_decoder` (cascade/experts/jpeg.py): it decodes them on its device, in its
batch, and answers an image that no decoder could read with that image's DecodeError in its place, so
the rest of the batch is answered. Experts without a decoder only ever see arrays.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from cascade.config import DecodeConfig, ExpertConfig
from cascade.decode import DecodeError, DeviceJpeg

ImageInput = np.ndarray | DeviceJpeg  # what a batch may hold (a DeviceJpeg only for an expert that takes_jpeg())


# The stages a worker's batch time is split into (sn72_miner_worker_stage_seconds): "unpack" (the worker reads the
# batch's items), then as its expert times them (`Stages`): "decode" (JPEGs to pixels: nvJPEG or arrays as they
# are), "preprocess" (resize and normalise queued), "forward" (the model queued, or run where it runs on the CPU),
# "wait" (for the device to finish the batch's answers; near 0 on a CPU, where the answers are already there).
WORKER_STAGES = ("unpack", "decode", "preprocess", "forward", "wait")


class Stages:
    """One batch's seconds by stage, wall clock: `lap(stage)` ends the stage that ran since the last lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


class ExpertError(RuntimeError):
    """An expert could not be loaded or could not answer a batch."""


class Expert(abc.ABC):
    """One loaded model replica on one device."""

    is_async: ClassVar[bool] = False
    # Async backends only: batches the scheduler keeps in flight at once (an engine that batches continuously
    # wants several; a worker process running one batch at a time wants the next one ready, not a queue).
    batches_in_flight: ClassVar[int] = 8
    # Backends whose preprocessing runs on the device and can decode a batch's JPEGs there (nvJPEG).
    decodes_jpeg: ClassVar[bool] = False

    def __init__(self, config: ExpertConfig, device: str) -> None:
        self.config = config
        self.device = device
        self.name = config.name
        # The replica's name in logs and metrics: name@device, with #k added by the engine where one device holds
        # several replicas of the expert (their queues, health and batches are then told apart).
        self.label = f"{config.name}@{device}"
        self.options: Any = config.typed_options()
        # (encoded CPU uint8 tensors, device) -> 3xHxW uint8 tensors on it; set by cascade/experts/jpeg.py
        self.jpeg_decoder: Callable[[list[Any], str], list[Any]] | None = None
        # The last `predict_batch`'s seconds by stage (`Stages`, WORKER_STAGES); None where the backend does not
        # time its stages. In a worker process these say where a busy worker's time goes: a long "wait" is a worker
        # held by its GPU, long host stages one held by its own CPU work (sn72_miner_worker_stage_seconds).
        self.stages: dict[str, float] | None = None

    def read_answers(self, probabilities: Any, stages: Stages) -> list[float]:
        """A batch's answers (a 1-D tensor, queued on the device) as floats: the forward's stage ends here, the wait
        for the device to finish them is the "wait" stage, and the batch's stages are kept as `self.stages`."""
        stages.lap("forward")
        values: list[float] = probabilities.cpu().tolist()
        stages.lap("wait")
        self.stages = stages.seconds
        return values

    def takes_jpeg(self) -> bool:
        """Whether batches may hand this replica encoded JPEGs (`DeviceJpeg`) to decode on its device."""
        return self.jpeg_decoder is not None

    def start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Begin loading without waiting for it (a worker process starts on its own); `load` finishes it."""

    restarts = 0  # times this replica's process was replaced by a fresh one (worker processes count theirs)

    def down(self) -> str:
        """Why this replica cannot take a batch now, "" while it can (a worker process being replaced says so: its
        replica is out of service until the fresh one is ready, whether or not a request has asked)."""
        return ""

    async def on_loop(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Called once on the engine's loop when this replica's batcher starts, before any batch (a worker process's
        socket is watched from then on, so a worker that dies while the miner is idle is replaced at once). Must not
        raise: the batcher awaits it before serving its queue."""

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights and processors onto `self.device`."""

    def predict_batch(self, images: Sequence[np.ndarray]) -> Sequence[float | DecodeError]:
        """One P(roadwork) in [0, 1] per image (synchronous backends); `DeviceJpeg` items and DecodeError
        answers only where `takes_jpeg()` (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} has no synchronous predict")

    def start_batch(self, images: Sequence[np.ndarray]) -> Callable[[], Sequence[float | DecodeError]]:
        """Begin a batch; the returned function waits for it and gives `predict_batch`'s answers. A backend whose
        device work runs asynchronously overrides this to return once that work is queued, so a worker process can
        prepare the next batch while the device runs this one; by default the batch is answered here, at once."""
        answers = self.predict_batch(images)
        return lambda: answers

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

    def warmed_in_load(self) -> tuple[float, float] | None:
        """(total, slowest batch) seconds of a warm-up `load` already ran (a worker process), else None."""
        return None

    def warmup_batches(self) -> list[list[np.ndarray]]:
        """Dummy batches run at load: the smallest and largest batch, of mixed sizes (also as JPEGs, for an
        expert that decodes them: the device decoder's first call sets it up)."""
        sizes = [(224, 224), (480, 640), (720, 1280)]
        rng = np.random.default_rng(0)

        def image(i: int) -> np.ndarray:
            h, w = sizes[i % len(sizes)]
            return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

        batches = [[image(0)]]
        if self.config.max_batch > 1:
            batches.append([image(i) for i in range(self.config.max_batch)])
        if self.takes_jpeg():  # the same sizes as JPEGs: one smooth frame per size, encoded once (noise is slow)
            frames = {hw: jpeg_of(np.linspace(0, 255, hw[0] * hw[1] * 3).astype(np.uint8).reshape(*hw, 3))
                      for hw in sizes}
            encoded: list[list[Any]] = [[frames[sizes[i % len(sizes)]] for i in range(len(batch))]
                                        for batch in batches]
            batches += encoded  # DeviceJpeg items: this expert takes them (see predict_batch)
        return batches


def warm_up(expert: Expert) -> tuple[float, float]:
    """Run the expert's dummy batches `warmup_batches` times: (total seconds, slowest batch seconds)."""
    if expert.config.warmup_batches == 0 or expert.is_async:
        return 0.0, 0.0
    t0 = time.monotonic()
    slowest = 0.0
    for _ in range(expert.config.warmup_batches):
        for batch in expert.warmup_batches():
            b0 = time.monotonic()
            expert.predict_batch(batch)
            slowest = max(slowest, time.monotonic() - b0)
    return time.monotonic() - t0, slowest


def jpeg_of(array: np.ndarray, quality: int = 75) -> DeviceJpeg:
    """An HxWx3 uint8 array as a checked JPEG (PIL's default quality and 4:2:0, as validators send)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    height, width = array.shape[:2]
    return DeviceJpeg(buffer.getvalue(), (width, height), 1, DecodeConfig())


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


def check_probabilities(name: str, values: Sequence[float | DecodeError], expected: int) -> list[float | DecodeError]:
    """Outputs are counted against inputs and must be finite probabilities (or one image's DecodeError)."""
    out = [v if isinstance(v, DecodeError) else float(v) for v in values]
    if len(out) != expected:
        raise ExpertError(f"expert {name} returned {len(out)} probabilities for {expected} images")
    for value in out:
        if not isinstance(value, DecodeError) and not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ExpertError(f"expert {name} returned {value}, outside [0, 1]")
    return out
