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
