"""Hot reload in the engine: the swap, requests in flight across it, freeing the old cascade, refusals.

The experts are fakes built by the engine's own factory hook (so the test holds no reference to
them and a weakref can show that the engine let them go); they gate on events, never on sleeps.
"""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any

import pytest

from cascade.config import Calibration, CascadeConfig, EngineConfig, ExpertConfig, SchedulerConfig
from cascade.consensus import logit, sigmoid
from cascade.engine import Engine
from cascade.experts.base import Expert, ExpertError
from cascade.placement import GIB, DeviceInfo
from cascade.request import Status
from cascade.serving import ReloadKind, ReloadRefused
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_job, on_loop, wait_for


class Builds:
    """The engine's expert factory: builds fakes by name, remembers each by weakref only."""

    def __init__(self) -> None:
        self.specs: dict[str, dict[str, Any]] = {}
        self.built: list[tuple[str, weakref.ref[Expert]]] = []
        self.started: dict[str, threading.Event] = {}
        self.closed: list[str] = []

    def add(self, name: str, answer: float, **spec: Any) -> None:
        self.specs[name] = {"answer": answer, **spec}

    def __call__(self, config: ExpertConfig, device: str) -> Expert:
        spec = dict(self.specs[config.name])
        if spec.pop("fail_load", False):
            raise ExpertError(f"expert {config.name}: cannot load {config.model!r}: no such folder")
        answer = spec.pop("answer")
        closed = self.closed

        class Tracked(FakeExpert):
            def close(self) -> None:
                closed.append(self.name)

        expert = Tracked(config, device, answer=lambda image: answer, **spec)
        self.started[config.name] = expert.started
        self.built.append((config.name, weakref.ref(expert)))
        return expert

    def alive(self, name: str) -> int:
        gc.collect()
        return sum(1 for built, ref in self.built if built == name and ref() is not None)


def start(builds: Builds, cascade: CascadeConfig, **scheduler: Any) -> Engine:
    engine = Engine(EngineConfig(cascade=cascade, scheduler=SchedulerConfig(**scheduler)), expert_factory=builds)
    engine.start()
    return engine


def one_expert(name: str, bias: float = 0.0, margin: float = 0.3, **overrides: Any) -> CascadeConfig:
    config = expert_config(name, calibration=Calibration(bias=bias), **overrides)
    return cascade_config([[config]], margins=[margin])


def calibrated(p: float, bias: float) -> float:
    return sigmoid(logit(p) + bias)


def test_a_calibration_change_loads_nothing_and_every_answer_after_it_is_the_new_one():
    builds = Builds()
    builds.add("a", 0.6)
    engine = start(builds, one_expert("a"))
    try:
        before = engine.submit(make_job(mark=1)).result(10)
        assert before.probability == pytest.approx(0.6)
        report = engine.reload(one_expert("a", bias=3.0))
        assert report.kind is ReloadKind.CALIBRATION and report.loaded == [] and report.kept == 1
        assert len(builds.built) == 1  # no expert built, loaded or warmed
        again = engine.submit(make_job(mark=1)).result(10)  # the same image: not the old cached answer
        assert again.status is Status.CONFIDENT and again.probability == pytest.approx(calibrated(0.6, 3.0))
        assert engine.config.cascade.experts()[0].calibration.bias == 3.0
        wait_for(lambda: engine.retiring() == 0)
        assert builds.closed == [] and engine.replica_states() == {"a@cpu": "healthy"}  # the replica kept serving
    finally:
        engine.close()


def test_the_same_cascade_again_changes_nothing():
    builds = Builds()
    builds.add("a", 0.9)
    engine = start(builds, one_expert("a"))
    try:
        engine.submit(make_job(mark=1)).result(10)
        serving = engine.serving
        report = engine.reload(one_expert("a"))
        assert report.kind is ReloadKind.UNCHANGED and engine.serving is serving
        assert engine.submit(make_job(mark=1)).result(10).status is Status.CACHED  # the cache was kept
    finally:
        engine.close()


def test_requests_in_flight_finish_on_the_old_cascade_new_ones_start_on_the_new_and_the_old_is_freed():
    gate = threading.Event()
    builds = Builds()
    builds.add("old", 0.9, gate=gate)
    builds.add("new", 0.1)
    engine = start(builds, one_expert("old", max_batch=1, max_wait_ms=0.0), max_in_flight=8)
    old_serving = weakref.ref(engine.serving)
    old_batcher = weakref.ref(engine.levels[0].batchers["old"][0])
    try:
        in_flight = engine.submit(make_job(mark=1, budget_s=20))
        queued = engine.submit(make_job(mark=2, budget_s=20))  # waits behind the held batch
        assert builds.started["old"].wait(10)
        report = engine.reload(one_expert("new"))
        assert report.kind is ReloadKind.MODELS and report.loaded == ["new@cpu"] and report.dropped == ["old@cpu"]
        fresh = engine.submit(make_job(mark=3)).result(10)
        assert [a.expert for a in fresh.answers] == ["new"] and fresh.probability == pytest.approx(0.1)
        assert engine.retiring() == 1 and builds.alive("old") == 1  # two requests still hold the old cascade
        gate.set()
        for future in (in_flight, queued):
            result = future.result(10)
            assert [a.expert for a in result.answers] == ["old"] and result.probability == pytest.approx(0.9)
        wait_for(lambda: engine.retiring() == 0)
        assert builds.closed == ["old"]
        assert builds.alive("old") == 0 and old_batcher() is None and old_serving() is None
        assert on_loop(engine, lambda: engine.admission.in_flight) == 0
    finally:
        gate.set()
        engine.close()


@pytest.mark.slow
def test_a_request_on_the_new_cascade_never_waits_for_the_same_image_on_the_old_one():
    gate = threading.Event()
    builds = Builds()
    builds.add("old", 0.9, gate=gate)
    builds.add("new", 0.2)
    engine = start(builds, one_expert("old", max_batch=1, max_wait_ms=0.0))
    try:
        first = engine.submit(make_job(mark=5, budget_s=20))
        assert builds.started["old"].wait(10)
        engine.reload(one_expert("new"))
        second = engine.submit(make_job(mark=5, budget_s=20)).result(10)  # the same image, old one still held
        assert second.status is not Status.COALESCED and [a.expert for a in second.answers] == ["new"]
        gate.set()
        assert [a.expert for a in first.result(10).answers] == ["old"]
        third = engine.submit(make_job(mark=5)).result(10)
        assert third.status is Status.CACHED and third.probability == pytest.approx(0.2)  # the new answer was kept
    finally:
        gate.set()
        engine.close()


def test_kept_experts_keep_their_replica_and_only_changed_ones_load():
    builds = Builds()
    for name, answer in (("a", 0.6), ("b", 0.7), ("c", 0.8)):
        builds.add(name, answer)
    first = cascade_config([[expert_config("a")], [expert_config("b")]], margins=[0.5, 0.5])
    engine = start(builds, first)
    try:
        kept = engine.levels[0].batchers["a"][0]
        second = cascade_config([[expert_config("a", weight=2.0)], [expert_config("c")]], margins=[0.5, 0.5])
        report = engine.reload(second)
        assert report.kind is ReloadKind.MODELS and report.loaded == ["c@cpu"] and report.dropped == ["b@cpu"]
        assert engine.levels[0].batchers["a"][0] is kept and [name for name, _ in builds.built] == ["a", "b", "c"]
        result = engine.submit(make_job(mark=9)).result(10)
        assert {a.expert: a.weight for a in result.answers} == {"a": 2.0, "c": 1.0}
        wait_for(lambda: engine.retiring() == 0)
        assert builds.closed == ["b"] and builds.alive("b") == 0 and builds.alive("a") == 1
    finally:
        engine.close()


def refused(engine: Engine, cascade: CascadeConfig) -> ReloadRefused:
    with pytest.raises(ReloadRefused) as caught:
        engine.reload(cascade)
    assert "\n" not in str(caught.value)
    return caught.value


def still_serving(engine: Engine, expert: str, probability: float) -> None:
    result = engine.submit(make_job(seed=77, mark=77)).result(10)
    assert [a.expert for a in result.answers] == [expert] and result.probability == pytest.approx(probability)


@pytest.mark.parametrize(("stage", "spec"), [
    ("load", {"fail_load": True}),
    ("warmup", {"fail": lambda batch: True, "error": "size mismatch in the first layer"}),
])
def test_a_cascade_that_fails_to_load_or_warm_up_is_refused_and_released(stage: str, spec: dict[str, Any]):
    builds = Builds()
    builds.add("a", 0.9)
    builds.add("broken", 0.5, **spec)
    engine = start(builds, one_expert("a"))
    try:
        serving = engine.serving
        error = refused(engine, one_expert("broken", warmup_batches=1))
        assert error.stage == stage and "broken@cpu" in str(error)
        assert engine.serving is serving and engine.retiring() == 0
        assert builds.alive("broken") == 0 and builds.closed == (["broken"] if stage == "warmup" else [])
        still_serving(engine, "a", 0.9)
    finally:
        engine.close()


def test_a_cascade_that_does_not_fit_beside_the_serving_one_is_refused_with_the_plan_s_reason():
    builds = Builds()
    builds.add("a", 0.9)
    engine = start(builds, one_expert("a"))
    gpu = [DeviceInfo("cuda:0", total_bytes=80 * GIB, free_bytes=10 * GIB)]
    try:
        engine.devices = lambda: gpu
        error = refused(engine, one_expert("vlm", device="cuda:0", memory_gb=20.0))
        assert error.stage == "placement" and "'vlm' needs 20.0 GB on cuda:0" in str(error)
        assert not error.restart_fits and "nor without it" in str(error)  # the serving cascade holds no GPU memory
        assert [name for name, _ in builds.built] == ["a"]  # nothing was loaded
        still_serving(engine, "a", 0.9)
    finally:
        engine.close()


@pytest.mark.slow
def test_reloads_back_to_back_free_every_replaced_cascade():
    gate = threading.Event()
    builds = Builds()
    builds.add("a", 0.9, gate=gate)
    builds.add("b", 0.3)
    builds.add("c", 0.2)
    engine = start(builds, one_expert("a", max_batch=1, max_wait_ms=0.0))
    try:
        held = engine.submit(make_job(mark=1, budget_s=20))
        assert builds.started["a"].wait(10)
        engine.reload(one_expert("b"))
        engine.reload(one_expert("c"))  # b had no request: freed at once; a is still held
        wait_for(lambda: engine.retiring() == 1)
        assert builds.alive("b") == 0 and builds.alive("a") == 1
        still_serving(engine, "c", 0.2)
        gate.set()
        assert held.result(10).answers[0].expert == "a"
        wait_for(lambda: engine.retiring() == 0)
        assert builds.alive("a") == 0 and sorted(builds.closed) == ["a", "b"]
    finally:
        gate.set()
        engine.close()


def test_close_during_a_held_swap_releases_both_cascades():
    gate = threading.Event()
    builds = Builds()
    builds.add("a", 0.9, gate=gate)
    builds.add("b", 0.3)
    engine = start(builds, one_expert("a", max_batch=1, max_wait_ms=0.0))
    held = engine.submit(make_job(mark=1, budget_s=20))
    assert builds.started["a"].wait(10)
    engine.reload(one_expert("b"))
    gate.set()  # the held batch ends; close() then stops it all
    engine.close()
    held.exception(10)  # answered or EngineClosed: either way, settled
    assert sorted(builds.closed) == ["a", "b"]
