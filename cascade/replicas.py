"""The engine's loaded experts: built, loaded, warmed up, and released with their device memory.

The engine (start-up) and its hot swap (cascade/reloading.py, reload) decide what is loaded and when, and serve
them; this module keeps them: it builds each replica in this process or in a worker process of its own, remembers its
slowest warm-up batch (which seeds its batcher's latency estimate), and releases replaced or refused replicas so their
device memory really goes back.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from cascade.config import EngineConfig, ExpertConfig
from cascade.experts.base import Expert, warm_up
from cascade.experts.registry import build_expert
from cascade.experts.worker import WorkerExpert
from cascade.serving import Loading

ExpertFactory = Callable[[ExpertConfig, str], Expert]


class Replicas:
    """Every expert replica the engine holds, in load order."""

    def __init__(self, config: EngineConfig, expert_factory: ExpertFactory = build_expert,
                 worker_factory: ExpertFactory | None = None) -> None:
        # Only the decode and scheduler settings are read here: a reload changes the cascade, never these.
        self._config = config
        self._expert_factory = expert_factory
        # What a worker process builds its replica with (None: the registry). Pickled to the worker by reference, so
        # a module-level function or a functools.partial of one (benchmarks' stand-in experts); never a closure.
        self._worker_factory = worker_factory
        self.experts: list[Expert] = []
        self._warm_batch_s: dict[int, float] = {}  # id(expert) -> slowest warm-up batch

    def warm_batch_s(self, expert: Expert) -> float:
        """The replica's slowest full warm-up batch in seconds (0.0 if unknown)."""
        return self._warm_batch_s.get(id(expert), 0.0)

    def load(self, slots: Sequence[Any], experts: Sequence[ExpertConfig], loading: Loading) -> None:
        """Build, load and warm each slot's replica into `loading` (raises the first failure as it is)."""
        by_name = {e.name: e for e in experts}
        labels = replica_labels(slots)
        # Worker processes load side by side: every one is started first, then each is waited for in turn.
        starting = {i: self._build(by_name[slot.expert], slot.device, labels[i]) for i, slot in enumerate(slots)
                    if by_name[slot.expert].worker == "process"}
        loaded: list[Expert] = []
        try:
            for expert in starting.values():
                expert.start()
            for i, slot in enumerate(slots):
                key = loading.replica = labels[i]
                t0 = time.monotonic()
                loading.stage = "load"
                expert = loading.current = starting.pop(i, None) or self._build(by_name[slot.expert], slot.device,
                                                                                  labels[i])
                expert.load()
                self._device_jpeg(expert)
                loading.load_s[key] = time.monotonic() - t0
                loading.stage = "warmup"
                loading.warmup_s[key], self._warm_batch_s[id(expert)] = self._warm_up(expert)
                self.experts.append(expert)
                loaded.append(expert)
                loading.placed.setdefault(slot.expert, []).append(expert)
                loading.current = None
                logger.info("loaded {} in {:.2f}s, warm-up {:.2f}s, {:.2f} GB held", key, loading.load_s[key],
                            loading.warmup_s[key], expert.memory_bytes() / 2**30)
            log_preprocessing(by_name, loaded)
        finally:
            for expert in starting.values():  # started, never reached: a replica before them failed
                expert.close()

    def discard(self, experts: list[Expert], why: str = "refused reload") -> None:
        """Release experts' models and hand their device memory back (not on the loop: it collects garbage).

        Empties `experts`: once it returns, nothing of the engine refers to them.
        """
        cuda = any(e.device.startswith("cuda") for e in experts)
        names = [e.label for e in experts]
        while experts:
            expert = experts.pop()
            try:
                expert.close()
            except Exception as exc:  # noqa: BLE001 - releasing one must not stop releasing the others
                logger.warning("expert {} failed to close: {!r}", expert.label, exc)
            self._warm_batch_s.pop(id(expert), None)
            if any(e is expert for e in self.experts):
                self.experts.remove(expert)
            del expert
        # Model objects in reference cycles would keep their device memory until a later collection.
        # NOTE: a full collection holds the GIL for ~0.1-0.2 s with torch loaded: once per model reload.
        # The heap was frozen after loading (cascade/process_settings.py `freeze_heap`): unfreeze so the freed
        # models' cycles are seen.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        if cuda:
            import torch

            torch.cuda.empty_cache()
        if names:
            logger.info("freed {} ({})", ", ".join(names), why)

    def close(self) -> None:
        """Close every replica (the engine's shutdown: its batchers are stopped first)."""
        for expert in list(self.experts):
            expert.close()

    def _build(self, config: ExpertConfig, device: str, label: str) -> Expert:
        """An unloaded replica: in this process (the factory's), or in a worker process of its own (built there by the
        registry, or by `worker_factory`)."""
        expert: Expert
        if config.worker == "process":
            expert = WorkerExpert(config, device, self._config.decode, self._config.decode.device,
                                  self._config.scheduler.gil_switch_interval_ms / 1000.0,
                                  factory=self._worker_factory)
        else:
            expert = self._expert_factory(config, device)
        expert.label = label
        return expert

    def _device_jpeg(self, expert: Expert) -> None:
        """JPEGs decoded on the expert's GPU where `decode.device` and the device allow (docs/decoding.md)."""
        if expert.decodes_jpeg and self._config.decode.device != "off":
            from cascade.experts.jpeg import enable_device_jpeg  # imports torch: only for backends that have it

            note = enable_device_jpeg(expert, self._config.decode.device)
            if note:
                logger.info("{}", note)

    @staticmethod
    def _warm_up(expert: Expert) -> tuple[float, float]:
        """Dummy batches, so the first real request is as fast as the hundredth.

        Returns (total warm-up seconds, slowest full batch seconds); the latter seeds the batcher's
        latency estimate until real batches have been measured.
        """
        done = expert.warmed_in_load()  # a worker process warms its replica up as it loads it
        if done is not None:
            return done
        return warm_up(expert)


def log_preprocessing(configs: dict[str, ExpertConfig], loaded: Sequence[Expert]) -> None:
    """One line per expert (its replicas share a config): backend, model, devices, input size, and the resize mode
    it serves and where that came from. A mode other than the training one costs accuracy silently, so the operator
    should be able to read it in the log (docs/resize.md)."""
    replicas: dict[str, list[Expert]] = {}
    for expert in loaded:
        replicas.setdefault(expert.name, []).append(expert)
    for name, experts in replicas.items():
        config, first = configs[name], experts[0]
        devices = Counter(e.device for e in experts)
        where = ", ".join(device if n == 1 else f"{device} x{n}" for device, n in devices.items())
        # Set by the backends that resize on their own terms (cascade/experts/preprocess.py `Preprocessing`).
        preprocessing = getattr(first, "preprocessing", None)
        if preprocessing is not None:
            how = preprocessing.describe()
        elif isinstance(first, WorkerExpert):
            how = first.reported_preprocessing() or "input and resize chosen in its worker process (not reported)"
        else:
            side = first.input_side()
            how = f"input {'full size' if side is None else f'<= {side} px'}, resize by the backend itself"
        logger.info("expert {}: backend {}, model {}, on {}, {}", name, config.backend, config.model, where, how)


def replica_labels(slots: Sequence[Any]) -> list[str]:
    """Each slot's replica label: name@device, or name@device#k where the device holds several of the expert."""
    per_device = Counter((slot.expert, slot.device) for slot in slots)
    return [f"{slot.expert}@{slot.device}" + (f"#{slot.replica}" if per_device[(slot.expert, slot.device)] > 1 else "")
            for slot in slots]

