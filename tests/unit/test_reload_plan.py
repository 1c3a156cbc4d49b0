"""What a reload keeps, loads and frees (cascade/serving.py), decided from configs and model files alone."""

from __future__ import annotations

import os
from pathlib import Path

from cascade.config import Calibration
from cascade.consensus import Pooling
from cascade.levels import Level
from cascade.placement import GIB, DeviceInfo
from cascade.scheduler import MicroBatcher
from cascade.serving import ReloadKind, ServingCascade, fits, model_stamp, plan_reload, without
from tests.factories.engine import FakeExpert, cascade_config, expert_config


def serving_of(cascade, device: str = "cpu") -> ServingCascade:
    """A ServingCascade over unstarted batchers (plans only read configs and replicas)."""
    levels = []
    for index, level_config in enumerate(cascade.levels):
        level = Level(index, level_config)
        for config in level_config.experts:
            level.batchers[config.name] = [MicroBatcher(FakeExpert(config, device, answer=lambda image: 0.5))]
        levels.append(level)
    return ServingCascade(cascade, levels, Pooling.from_config(cascade),
                          stamps={e.name: model_stamp(e.model) for e in cascade.experts()})


def test_calibration_weights_margins_prior_and_version_change_nothing_loaded():
    old = cascade_config([[expert_config("a")], [expert_config("b")]])
    new = cascade_config([[expert_config("a", calibration=Calibration(temperature=2.0, bias=1.0), weight=0.5)],
                          [expert_config("b", memory_gb=3.0, warmup_batches=4)]], margins=[0.1, 0.2], prior=0.3)
    new.version = "test+cal.1234abcd"
    serving = serving_of(old)
    plan = plan_reload(serving, new)
    assert plan.kind is ReloadKind.CALIBRATION and plan.to_load == [] and plan.dropped == []
    assert plan.kept == serving.batchers()
    assert plan_reload(serving, old).kind is ReloadKind.UNCHANGED


def test_any_field_a_replica_is_built_from_loads_that_expert_again():
    old = cascade_config([[expert_config("a"), expert_config("b")]])
    serving = serving_of(old)
    for change in ({"model": "fake/other"}, {"dtype": "float16"}, {"input_size": 64}, {"max_batch": 4},
                   {"options": {"positive_labels": ["cone"]}}, {"resize": "letterbox"}):
        new = cascade_config([[expert_config("a", **change), expert_config("b")]])
        plan = plan_reload(serving, new)
        assert plan.kind is ReloadKind.MODELS, change
        assert [e.name for e in plan.to_load] == ["a"] and plan.dropped == ["a@cpu"], change
        assert list(plan.kept) == ["b"], change


def test_a_removed_expert_is_dropped_and_a_new_one_loaded():
    serving = serving_of(cascade_config([[expert_config("a")], [expert_config("b")]]))
    plan = plan_reload(serving, cascade_config([[expert_config("a")], [expert_config("c")]]))
    assert plan.kind is ReloadKind.MODELS and [e.name for e in plan.to_load] == ["c"] and plan.dropped == ["b@cpu"]
    shrunk = plan_reload(serving, cascade_config([[expert_config("a")]]))
    assert shrunk.kind is ReloadKind.MODELS and shrunk.to_load == [] and shrunk.dropped == ["b@cpu"]


def test_a_local_model_rewritten_in_place_is_loaded_again(tmp_path: Path):
    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"0" * 64)
    cascade = cascade_config([[expert_config("a", model=str(folder))]])
    serving = serving_of(cascade)
    assert plan_reload(serving, cascade).kind is ReloadKind.UNCHANGED
    weights.write_bytes(b"1" * 80)  # retrained into the same folder
    plan = plan_reload(serving, cascade)
    assert plan.kind is ReloadKind.MODELS and [e.name for e in plan.to_load] == ["a"]
    before = model_stamp(str(folder))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, newer file
    assert model_stamp(str(folder)) != before
    assert model_stamp("org/hub-model") == "" and model_stamp(str(tmp_path / "missing")) == ""


def test_memory_held_by_the_serving_cascade_counts_as_free_for_a_restart():
    old = cascade_config([[expert_config("big", device="cuda:0", memory_gb=30.0)]])
    serving = serving_of(old, device="cuda:0")
    gpu = [DeviceInfo("cuda:0", total_bytes=80 * GIB, free_bytes=40 * GIB), DeviceInfo("cuda:1", 80 * GIB, 80 * GIB)]
    freed = without(gpu, [serving])
    assert freed[0].free_bytes == 70 * GIB and freed[1].free_bytes == 80 * GIB
    new = cascade_config([[expert_config("bigger", device="cuda:0", memory_gb=60.0)]])
    assert not fits(new, gpu) and fits(new, freed)
    assert not fits(cascade_config([[expert_config("huge", device="cuda:0", memory_gb=75.0)]]), freed)
