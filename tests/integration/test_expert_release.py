"""Every backend's loaded expert is freed by reference counting alone, with no cycle collection.

The engine freezes its heap after loading (`freeze_heap`), so an expert that refers to itself (a bound method
of its own stored on it, a closure over `self`) is never collected once a hot reload replaces it: its weights
stay on the device for good. Each backend is loaded from a tiny model through the registry, used once, then
dropped with the cycle collector off.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from cascade.experts.base import Expert
from sn72_lab.tiny_models import BUILDERS
from tests.factories.experts import load_expert, make_images

BACKENDS = {  # backend -> the tiny model it loads
    "hf_classifier": "tiny-vit",
    "zero_shot": "tiny-clip",
    "owlv2": "tiny-owlv2",
    "detector": "tiny-yolo",
    "vlm_transformers": "tiny-vlm",
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_used_expert_is_freed_without_a_cycle_collection(backend: str, tmp_path: Path) -> None:
    model = BUILDERS[BACKENDS[backend]](tmp_path / backend)
    expert = load_expert(Expert, backend, model)
    assert len(expert.predict_batch(make_images([(64, 80), (48, 48)]))) == 2
    alive = weakref.ref(expert)
    gc.collect()
    gc.disable()
    try:
        del expert
        assert alive() is None, f"{backend}: the expert is kept alive by a reference cycle"
    finally:
        gc.enable()
