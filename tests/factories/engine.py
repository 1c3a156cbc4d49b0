"""Small factories for engine tests: configs, gated fake experts, jobs. Fakes gate on events, not sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascade.config import CascadeConfig, EngineConfig, ExpertConfig, LevelConfig, SchedulerConfig
from cascade.engine import Engine
from cascade.experts.base import Expert
from cascade.request import Job
from sn72_tools.client import synthetic_image


def expert_config(name: str, **overrides: Any) -> ExpertConfig:
    fields: dict[str, Any] = {
        "name": name, "backend": "hf_classifier", "model": f"fake/{name}", "device": "cpu",
        "max_batch": 8, "max_wait_ms": 1.0, "warmup_batches": 0, "expected_latency_ms": 5.0,
    }
    fields.update(overrides)
    return ExpertConfig(**fields)


def cascade_config(levels: Sequence[Sequence[ExpertConfig]], margins: Sequence[float] | None = None,
                   prior: float = 0.5) -> CascadeConfig:
    margins = list(margins or [0.3] * len(levels))
    return CascadeConfig(
        version="test",
        prior=prior,
        levels=[LevelConfig(name=f"L{i}", experts=list(experts), exit_margin=margins[i])
                for i, experts in enumerate(levels)],
    )


class FakeExpert(Expert):
    """Answers `answer(image)` per image; optionally waits for `gate` before each batch; records batches."""

    def __init__(self, config: ExpertConfig, device: str, answer: Callable[[np.ndarray], float],
                 gate: threading.Event | None = None, delay_s: float = 0.0, fail: Callable[[int], bool] | None = None,
                 error: str = "simulated CUDA error"):
        super().__init__(config, device)
        self.answer = answer
        self.gate = gate
        self.delay_s = delay_s
        self.fail = fail
        self.error = error
        self.batches: list[list[int]] = []  # the marker value (pixel [0,0,0]) of each image per batch
        self.started = threading.Event()

    def load(self) -> None:
        pass

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        if self.delay_s:
            time.sleep(self.delay_s)  # simulated compute time of a slow model (not a test synchronisation)
        marks = [int(image[0, 0, 0]) for image in images]
        self.batches.append(marks)
        if self.fail is not None and self.fail(len(self.batches)):
            raise RuntimeError(f"{self.name}: {self.error}")
        return [self.answer(image) for image in images]


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Bounded wait for an observable state of the engine (not a sleep standing in for one)."""
    until = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < until, "condition not reached in time"
        time.sleep(0.002)


def on_loop(engine: Engine, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the engine's loop thread (loop-owned state is read there) and return its value."""
    import asyncio

    async def call() -> Any:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), engine._loop).result(10)


def make_engine(experts: dict[str, FakeExpert | Callable[[ExpertConfig, str], Expert]], cascade: CascadeConfig,
                **scheduler: Any) -> Engine:
    """An engine whose experts are the given fakes (by name), started."""

    def factory(config: ExpertConfig, device: str) -> Expert:
        made = experts[config.name]
        return made if isinstance(made, Expert) else made(config, device)

    engine = Engine(EngineConfig(cascade=cascade, scheduler=SchedulerConfig(**scheduler)), expert_factory=factory)
    engine.start()
    return engine


def marked_payload(mark: int, seed: int = 0) -> str:
    """A PNG whose top-left red value is `mark` (lossless, so fakes can read which request it is)."""
    import base64
    import io

    from PIL import Image

    array = np.asarray(synthetic_image(seed, (64, 48))).copy()
    array[0, 0, 0] = mark
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def make_job(payload: str | None = None, budget_s: float = 5.0, hotkey: str = "hk", stake: float = 1.0,
             mark: int = 0, seed: int | None = None) -> Job:
    now = time.monotonic()
    if payload is None:
        payload = marked_payload(mark, seed if seed is not None else mark)
    return Job(payload=payload, hotkey=hotkey, stake=stake, arrival_s=now, deadline_s=now + budget_s)



def expert_answers(cascade_file: Path, files: Sequence[Path]) -> list[float]:
    """The raw answer of a cascade file's first expert to each image file, one request at a time through the real
    engine (result cache off)."""
    import base64

    from cascade.config import load_cascade

    engine = Engine(EngineConfig(cascade=load_cascade(cascade_file), scheduler=SchedulerConfig(cache_size=0)))
    engine.start()
    try:
        answers = []
        for file in files:
            now = time.monotonic()
            job = Job(payload=base64.b64encode(file.read_bytes()).decode(), arrival_s=now, deadline_s=now + 30)
            answers.append(engine.submit(job).result(60).answers[0].probability)
        return answers
    finally:
        engine.close()
