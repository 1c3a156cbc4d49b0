"""Micro-batching, EDF order, expiry and failure isolation, with fake experts gated on events."""

from __future__ import annotations

import threading
import time

import pytest

from cascade.decode import DecodeError
from cascade.request import Status
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_engine, make_job, wait_for


def test_batches_fill_up_to_max_batch_while_the_expert_is_busy():
    gate = threading.Event()
    config = expert_config("a", max_batch=8, max_wait_ms=1.0)
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.9, gate=gate)
    engine = make_engine({"a": fake}, cascade_config([[config]]))
    try:
        first = engine.submit(make_job(mark=100))
        assert fake.started.wait(10)
        rest = [engine.submit(make_job(mark=i)) for i in range(10)]
        wait_for(lambda: engine.queue_depths()["a@cpu"] == 10)
        gate.set()
        results = [f.result(10) for f in [first, *rest]]
        assert [len(b) for b in fake.batches] == [1, 8, 2]
        assert all(r.status is Status.CONFIDENT and r.probability > 0.5 for r in results)
    finally:
        gate.set()
        engine.close()


def test_a_lone_request_waits_at_most_max_wait_then_runs_alone():
    config = expert_config("a", max_batch=8, max_wait_ms=60.0, wait_when_idle=True)
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.1)
    engine = make_engine({"a": fake}, cascade_config([[config]]))
    try:
        started = time.monotonic()
        result = engine.submit(make_job(mark=1)).result(10)
        assert time.monotonic() - started >= 0.06
        assert fake.batches == [[1]]
        assert result.probability < 0.5
    finally:
        engine.close()


def test_an_idle_replica_that_does_not_wait_when_idle_starts_a_lone_request_at_once():
    gate = threading.Event()
    # A window far longer than the test: only the idle dispatch can start the first batch before the gate opens.
    config = expert_config("a", max_batch=8, max_wait_ms=1000.0, wait_when_idle=False)
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.9, gate=gate)
    engine = make_engine({"a": fake}, cascade_config([[config]]))
    try:
        first = engine.submit(make_job(mark=100))
        assert fake.started.wait(0.9)  # started before its 1 s window would have closed
        rest = [engine.submit(make_job(mark=i)) for i in range(3)]
        wait_for(lambda: engine.queue_depths()["a@cpu"] == 3)
        gate.set()
        assert all(f.result(10).status is Status.CONFIDENT for f in [first, *rest])
        assert [len(b) for b in fake.batches] == [1, 3]  # what arrived while the first ran went together
    finally:
        gate.set()
        engine.close()


@pytest.mark.slow
def test_a_replica_that_waits_when_idle_holds_a_lone_request_for_its_window():
    # The longest window (room for a busy box), held even when idle: not the default.
    config = expert_config("a", max_batch=8, max_wait_ms=1000.0, wait_when_idle=True)
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.9)
    engine = make_engine({"a": fake}, cascade_config([[config]]))
    try:
        first = engine.submit(make_job(mark=100))
        rest = [engine.submit(make_job(mark=i)) for i in range(3)]
        assert all(f.result(10).status is Status.CONFIDENT for f in [first, *rest])
        assert [len(b) for b in fake.batches] == [4]  # the window gathered them into one batch
    finally:
        engine.close()


def test_queue_is_served_earliest_deadline_first():
    gate = threading.Event()
    config = expert_config("a", max_batch=1, max_wait_ms=0.0)
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.9, gate=gate)
    engine = make_engine({"a": fake}, cascade_config([[config]]))
    try:
        blocker = engine.submit(make_job(mark=100, budget_s=20))
        assert fake.started.wait(10)
        futures = [engine.submit(make_job(mark=mark, budget_s=budget)) for mark, budget in ((1, 15), (2, 5), (3, 10))]
        wait_for(lambda: engine.queue_depths()["a@cpu"] == 3)
        gate.set()
        for future in [blocker, *futures]:
            future.result(20)
        assert fake.batches == [[100], [2], [3], [1]]
    finally:
        gate.set()
        engine.close()


def test_an_expired_request_is_never_computed_and_still_answered_in_time():
    gate = threading.Event()
    config = expert_config("a", max_batch=4, max_wait_ms=0.0)
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.9, gate=gate)
    engine = make_engine({"a": fake}, cascade_config([[config]], prior=0.25))
    try:
        blocker = engine.submit(make_job(mark=100, budget_s=20))
        assert fake.started.wait(10)
        job = make_job(mark=7, budget_s=0.4)
        short = engine.submit(job)
        result = short.result(10)  # answered at its deadline while the expert is still busy
        assert time.monotonic() <= job.deadline_s + 0.05
        assert result.status is Status.PRIOR and result.probability == 0.25
        gate.set()
        blocker.result(10)
        engine.submit(make_job(mark=8)).result(10)
        assert all(7 not in batch for batch in fake.batches)
        assert [100] in fake.batches and [8] in fake.batches
    finally:
        gate.set()
        engine.close()


def test_a_failing_batch_fails_only_its_requests_which_are_answered_by_the_next_level():
    gate = threading.Event()
    first = expert_config("first", max_batch=1, max_wait_ms=0.0)
    second = expert_config("second", max_batch=8)
    failing = FakeExpert(first, "cpu", answer=lambda image: 0.95, gate=gate, fail=lambda n: n == 1)
    backup = FakeExpert(second, "cpu", answer=lambda image: 0.1)
    engine = make_engine({"first": failing, "second": backup}, cascade_config([[first], [second]]))
    try:
        doomed = engine.submit(make_job(mark=1))
        assert failing.started.wait(10)
        fine = engine.submit(make_job(mark=2))
        wait_for(lambda: engine.queue_depths()["first@cpu"] == 1)
        gate.set()
        doomed_result, fine_result = doomed.result(10), fine.result(10)
        assert doomed_result.failures == ("first:error",)
        assert [a.expert for a in doomed_result.answers] == ["second"]
        assert doomed_result.probability < 0.5 and doomed_result.levels_run == 2
        assert fine_result.status is Status.CONFIDENT and fine_result.levels_run == 1
        assert [a.expert for a in fine_result.answers] == ["first"]
        assert backup.batches == [[1]]
    finally:
        gate.set()
        engine.close()


def test_bad_payloads_are_refused_with_a_reason():
    config = expert_config("a")
    engine = make_engine({"a": FakeExpert(config, "cpu", answer=lambda image: 0.9)}, cascade_config([[config]]))
    try:
        with pytest.raises(DecodeError, match="invalid base64"):
            engine.submit(make_job(payload="not base64 at all!")).result(10)
        with pytest.raises(DecodeError, match="not a readable image"):
            engine.submit(make_job(payload="aGVsbG8gd29ybGQ=")).result(10)
        assert engine.stats.decode_errors == 2
    finally:
        engine.close()


def test_the_same_image_is_answered_from_the_cache_consistently():
    config = expert_config("a")
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.83)
    engine = make_engine({"a": fake}, cascade_config([[config]]))
    try:
        job = make_job(mark=5)
        first = engine.submit(job).result(10)
        again = engine.submit(make_job(payload=job.payload, hotkey="someone-else")).result(10)
        assert again.status is Status.CACHED and again.probability == first.probability
        assert len(fake.batches) == 1
    finally:
        engine.close()


def test_a_lost_device_context_is_reported_for_a_restart_but_oom_is_not():
    from cascade.config import EngineConfig, SchedulerConfig
    from cascade.device_errors import is_fatal_device_error
    from cascade.engine import Engine

    assert is_fatal_device_error(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_fatal_device_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_fatal_device_error(ValueError("bad input"))

    fatal: list[tuple[str, str]] = []
    config = expert_config("a")

    class DeadDevice(FakeExpert):
        def predict_batch(self, images):
            raise RuntimeError("CUDA error: device-side assert triggered")

    engine = Engine(EngineConfig(cascade=cascade_config([[config]], prior=0.3), scheduler=SchedulerConfig()),
                    expert_factory=lambda cfg, device: DeadDevice(cfg, device, answer=lambda image: 0.9),
                    on_fatal=lambda replica, exc: fatal.append((replica, str(exc))))
    engine.start()
    try:
        result = engine.submit(make_job(mark=1)).result(10)
        assert result.status is Status.PRIOR and result.probability == 0.3
        assert fatal == [("a@cpu", "CUDA error: device-side assert triggered")]
    finally:
        engine.close()


def test_async_backends_get_several_batches_in_flight():
    import asyncio

    from cascade.config import EngineConfig, SchedulerConfig
    from cascade.engine import Engine

    config = expert_config("vlm", backend="vlm_remote", max_batch=1, max_wait_ms=0.0,
                           options={"base_url": "http://127.0.0.1:9/v1"})
    release = threading.Event()
    started: list[int] = []

    class ContinuousBatchingServer(FakeExpert):
        is_async = True

        async def predict_async(self, images, deadline_s):
            started.append(int(images[0][0, 0, 0]))
            assert await asyncio.to_thread(release.wait, 10)  # held until the test has seen all start
            return [0.9 for _ in images]

    engine = Engine(EngineConfig(cascade=cascade_config([[config]]), scheduler=SchedulerConfig()),
                    expert_factory=lambda cfg, device: ContinuousBatchingServer(cfg, device, answer=lambda i: 0.9))
    engine.start()
    try:
        futures = [engine.submit(make_job(mark=mark)) for mark in (1, 2, 3)]
        wait_for(lambda: len(started) == 3)  # three batches of one, all running at once
        release.set()
        assert all(f.result(10).status is Status.CONFIDENT for f in futures)
        assert sorted(started) == [1, 2, 3]
    finally:
        release.set()
        engine.close()
