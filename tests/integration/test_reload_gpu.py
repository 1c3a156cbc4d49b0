"""Hot reload on a GPU: a model swap holds both models only while it must, then device memory returns to
its level before the swap; a calibration swap allocates nothing. Real-size ViT-B/16s with random weights,
loaded through the registry like a hub id (CUDA graphs on, as in production)."""

from __future__ import annotations

import gc
import weakref

import pytest

from cascade.config import Calibration, CascadeConfig, EngineConfig, ExpertConfig, LevelConfig
from cascade.engine import Engine
from cascade.serving import ReloadKind
from sn72_lab.tiny_models import build_vit_b16
from tests.factories.engine import make_job, wait_for

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def vit(model, name: str, bias: float = 0.0) -> CascadeConfig:
    expert = ExpertConfig(name=name, backend="hf_classifier", model=str(model), device="cuda:0", max_batch=16,
                          warmup_batches=1, memory_gb=1.0, calibration=Calibration(bias=bias),
                          options={"positive_labels": ["Roadwork"]})
    return CascadeConfig(version=name, levels=[LevelConfig(name="only", exit_margin=0.3, experts=[expert])])


def referrers(thing: object) -> list[str]:
    """What keeps `thing` alive, for the failure message (the engine's heap is frozen: unfreeze to see it)."""
    gc.unfreeze()
    return [f"{type(r).__name__}: {str(r)[:120]}" for r in gc.get_referrers(thing) if r is not globals()]


def serve_some(engine: Engine, count: int = 48) -> None:
    futures = [engine.submit(make_job(mark=i % 250, seed=i, budget_s=30.0)) for i in range(count)]
    assert all(f.result(60).answers for f in futures)


def test_device_memory_returns_to_its_level_before_the_swap_once_the_old_model_is_freed(tmp_path):
    import torch

    first, second = build_vit_b16(tmp_path / "vit-a", seed=0), build_vit_b16(tmp_path / "vit-b", seed=1)
    engine = Engine(EngineConfig(cascade=vit(first, "vit-a")))
    engine.start()
    try:
        serve_some(engine)  # steady state: the allocator holds what serving needs
        old_expert = weakref.ref(engine.levels[0].batchers["vit-a"][0].expert)
        model_bytes = old_expert().memory_bytes()  # type: ignore[union-attr]
        torch.cuda.synchronize(0)
        allocated_before = torch.cuda.memory_allocated(0)
        free_before, _ = torch.cuda.mem_get_info(0)

        torch.cuda.reset_peak_memory_stats(0)
        assert engine.reload(vit(first, "vit-a", bias=1.0)).kind is ReloadKind.CALIBRATION
        assert torch.cuda.max_memory_allocated(0) <= allocated_before + 0.02 * model_bytes  # nothing loaded

        torch.cuda.reset_peak_memory_stats(0)
        report = engine.reload(vit(second, "vit-b"))
        assert report.kind is ReloadKind.MODELS and report.loaded == ["vit-b@cuda:0"]
        wait_for(lambda: engine.retiring() == 0, timeout_s=60)
        serve_some(engine)
        torch.cuda.synchronize(0)
        peak = torch.cuda.max_memory_allocated(0)
        allocated_after = torch.cuda.memory_allocated(0)
        free_after, _ = torch.cuda.mem_get_info(0)
        gc.collect()
        assert old_expert() is None, referrers(old_expert())
        assert peak >= allocated_before + 0.9 * model_bytes  # during: both models at once
        assert abs(allocated_after - allocated_before) <= 0.05 * model_bytes  # after: one model again
        assert free_after >= free_before - 0.25 * model_bytes, (free_before, free_after)  # and handed back
    finally:
        engine.close()
