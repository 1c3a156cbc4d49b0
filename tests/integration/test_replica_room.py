"""Two replicas of the first level: the room admission gives them, and how requests are shared between them.

With one GPU's room (256) two replicas took turns, and with equal estimates every request went to the first
replica: the second GPU idled while the first one queued (docs/performance.md). Admission now scales with the
first level's replicas unless `max_in_flight` fixes it, and equal estimates go to the shorter queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from cascade.config import ExpertConfig
from cascade.request import Status
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_engine, make_job, on_loop, wait_for


def replicated(name: str = "a", replicas: int = 2, **overrides: object) -> ExpertConfig:
    return expert_config(name, device="auto", replicas=replicas, **overrides)


def recording(made: list[FakeExpert], gate: threading.Event | None = None) -> Callable[[ExpertConfig, str], FakeExpert]:
    """A factory of replicas answering 0.9 (each waiting for `gate` when given), kept in `made` as built."""

    def factory(cfg: ExpertConfig, device: str) -> FakeExpert:
        made.append(FakeExpert(cfg, device, answer=lambda image: 0.9, gate=gate))
        return made[-1]

    return factory


def test_admission_room_grows_with_the_first_levels_replicas_unless_fixed():
    engine = make_engine({"a": lambda cfg, device: FakeExpert(cfg, device, answer=lambda image: 0.9)},
                         cascade_config([[replicated()]]), max_in_flight_per_replica=3)
    try:
        assert engine.admission.max_in_flight == 6
        engine.reload(cascade_config([[replicated(replicas=1)]]))
        assert on_loop(engine, lambda: engine.admission.max_in_flight) == 3
    finally:
        engine.close()
    fixed = make_engine({"a": lambda cfg, device: FakeExpert(cfg, device, answer=lambda image: 0.9)},
                        cascade_config([[replicated()]]), max_in_flight=5, max_in_flight_per_replica=3)
    try:
        assert fixed.admission.max_in_flight == 5
    finally:
        fixed.close()


def test_requests_waiting_for_room_are_admitted_when_a_reload_adds_replicas():
    gate = threading.Event()
    made: list[FakeExpert] = []
    factory = recording(made, gate)

    engine = make_engine({"a": factory, "b": factory}, cascade_config([[replicated(replicas=1, max_batch=1)]]),
                         max_in_flight_per_replica=1)
    try:
        first = engine.submit(make_job(mark=1, budget_s=20))
        wait_for(lambda: bool(made) and made[0].started.is_set())
        second = engine.submit(make_job(mark=2, budget_s=20))
        wait_for(lambda: on_loop(engine, engine.admission.waiting) == 1)
        # Another expert with two replicas: the new cascade's room is 2, and the waiting request goes in at once.
        engine.reload(cascade_config([[replicated("b", replicas=2, max_batch=1)]]))
        wait_for(lambda: on_loop(engine, engine.admission.waiting) == 0)
        assert on_loop(engine, lambda: engine.admission.in_flight) == 2
        gate.set()
        assert [f.result(10).status for f in (first, second)] == [Status.CONFIDENT, Status.CONFIDENT]
    finally:
        gate.set()
        engine.close()


def test_requests_arriving_together_are_shared_between_idle_replicas():
    made: list[FakeExpert] = []
    factory = recording(made)

    # A long batching window: every request below is queued before either replica starts a batch, so both
    # replicas' estimates are equal the whole time (0 batches ahead) and only their queues differ.
    config = replicated(max_batch=8, max_wait_ms=300.0, expected_latency_ms=5.0, wait_when_idle=True)
    engine = make_engine({"a": factory}, cascade_config([[config]]))
    try:
        futures = [engine.submit(make_job(mark=i + 1, budget_s=10)) for i in range(4)]
        for future in futures:
            assert future.result(10).status is Status.CONFIDENT
        per_replica = sorted(sum(len(batch) for batch in expert.batches) for expert in made)
        assert per_replica == [2, 2], [expert.batches for expert in made]
    finally:
        engine.close()


def test_a_raised_bound_admits_waiters_at_once():
    from cascade.admission import Admission

    async def scenario() -> tuple[bool, int]:
        admission = Admission(1, 10, 10)
        assert admission.try_take("hk")
        loop = asyncio.get_running_loop()
        waiter = asyncio.ensure_future(admission.acquire("hk", 1.0, loop.time() + 5.0, loop.time()))
        await asyncio.sleep(0)
        assert not waiter.done() and admission.waiting() == 1
        admission.resize(2)
        return await asyncio.wait_for(waiter, 1.0), admission.in_flight

    assert asyncio.run(scenario()) == (True, 2)


def test_two_replicas_on_one_device_keep_apart_in_logs_and_metrics():
    from prometheus_client import generate_latest

    gate = threading.Event()
    made: list[FakeExpert] = []
    factory = recording(made, gate)

    engine = make_engine({"a": factory}, cascade_config([[replicated(max_batch=1, max_wait_ms=0.0)]]))
    try:
        labels = ["a@cpu#0", "a@cpu#1"]
        assert sorted(engine.queue_depths()) == labels and sorted(engine.startup.load_s) == labels
        first = engine.submit(make_job(mark=1, budget_s=10))
        wait_for(lambda: any(expert.started.is_set() for expert in made))
        second = engine.submit(make_job(mark=2, budget_s=10))  # the other replica: the first one is busy
        wait_for(lambda: all(expert.started.is_set() for expert in made))
        gate.set()
        assert [f.result(10).status for f in (first, second)] == [Status.CONFIDENT, Status.CONFIDENT]
        exposition = generate_latest(engine.stats.registry).decode()
        for label in labels:  # each replica's own queue and health series, and its own batches
            assert f'queue_depth{{replica="{label}"}}' in exposition
        batches = {dict(key)["replica"]: count for key, count in engine.stats.samples("batch_size", "_count").items()}
        assert batches == {"a@cpu#0": 1.0, "a@cpu#1": 1.0}
    finally:
        gate.set()
        engine.close()
