"""The engine owns every request's lifetime.

Callers never cancel engine work; every wait ends by itself at the request's deadline with the best
answer so far; whatever a request took (its admission slot, its coalescing entry, its queued batcher
items) is given back on every exit path. Fakes are gated on events; deadlines are real time.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from cascade.request import Status
from tests.factories.engine import (
    FakeExpert,
    cascade_config,
    expert_config,
    make_engine,
    make_job,
    marked_payload,
    on_loop,
    wait_for,
)


def _hash(payload: str) -> str:
    import base64

    from cascade.decode import hash_bytes

    return hash_bytes(base64.b64decode(payload))


def held(engine) -> tuple[int, int, int]:
    """(admission slots in use, admission waiters, coalescing entries), read on the engine's loop."""
    return on_loop(engine, lambda: (engine.admission.in_flight, engine.admission.waiting(),
                                    len(engine.path.coalescer) if hasattr(engine, "path") else 0))


def answered_by(future: concurrent.futures.Future, deadline_s: float):
    result = future.result(30)
    assert time.monotonic() <= deadline_s + 0.05, "answered after its deadline"
    return result


def test_callers_that_give_up_while_waiting_for_admission_leak_no_slot():
    gate = threading.Event()
    config = expert_config("a", max_batch=1, max_wait_ms=0.0)
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.9, gate=gate)
    engine = make_engine({"a": fake}, cascade_config([[config]]), max_in_flight=1)
    try:
        holder = engine.submit(make_job(mark=1, budget_s=20))
        assert fake.started.wait(10)
        waiters = [engine.submit(make_job(mark=10 + i, budget_s=20)) for i in range(20)]
        wait_for(lambda: held(engine)[1] == 20)
        for future in waiters:
            future.cancel()  # what the miner's wait_for did to every request it gave up on
        gate.set()
        assert holder.result(10).status is Status.CONFIDENT
        later = engine.submit(make_job(mark=99, budget_s=5)).result(10)
        assert later.status is Status.CONFIDENT, later
        wait_for(lambda: held(engine) == (0, 0, 0) and engine.active() == 0)
    finally:
        gate.set()
        engine.close()


@pytest.mark.parametrize("stage", ["admission", "decoding", "queued", "batched"])
def test_a_deadline_at_any_stage_is_answered_in_time_and_leaves_nothing_behind(stage):
    gate = threading.Event()
    config = expert_config("a", max_batch=1, max_wait_ms=0.0)
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.9, gate=gate)
    engine = make_engine({"a": fake}, cascade_config([[config]], prior=0.25),
                         max_in_flight=1 if stage == "admission" else 8)
    budget = engine.path.budget
    taken = 0
    try:
        if stage == "decoding":
            taken = budget.acquire(budget.total, time.monotonic() + 30)  # every decode now waits for memory
        elif stage != "batched":
            engine.submit(make_job(mark=1, budget_s=20))  # holds the expert (and the only slot)
            assert fake.started.wait(10)
        victim = make_job(mark=7, budget_s=0.5)
        result = answered_by(engine.submit(victim), victim.deadline_s)
        assert result.status is Status.PRIOR and result.probability == 0.25
        if stage == "batched":
            assert fake.started.is_set()  # it was in the batch the deadline cut short
        budget.release(taken)
        gate.set()
        wait_for(lambda: held(engine) == (0, 0, 0) and engine.active() == 0)
        assert all(depth == 0 for depth in engine.queue_depths().values())
        if stage in ("admission", "queued"):
            assert all(7 not in batch for batch in fake.batches), "dropped work was computed"
        assert engine.submit(make_job(mark=8, budget_s=5)).result(10).status is Status.CONFIDENT
    finally:
        gate.set()
        engine.close()


def test_a_coalesced_peer_is_answered_when_the_first_caller_goes_away():
    gate = threading.Event()
    config = expert_config("a", max_batch=4)
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.9, gate=gate)
    engine = make_engine({"a": fake}, cascade_config([[config]]))
    try:
        payload = marked_payload(5)
        first = engine.submit(make_job(payload, budget_s=10))
        assert fake.started.wait(10)
        peer = engine.submit(make_job(payload, budget_s=10))
        waiting = on_loop(engine, lambda: engine.path.coalescer.get(_hash(payload)))
        wait_for(lambda: on_loop(engine, lambda: waiting.peers) == 1)  # the peer waits on the first's computation
        first.cancel()  # the first caller disconnects
        gate.set()
        result = peer.result(10)
        assert result.status is Status.COALESCED and result.probability == pytest.approx(0.9)
        assert fake.batches == [[5]]  # computed once, for both
        wait_for(lambda: held(engine) == (0, 0, 0))
    finally:
        gate.set()
        engine.close()


def test_a_peer_with_more_time_computes_an_image_whose_first_asker_ran_out():
    gate = threading.Event()
    config = expert_config("a", max_batch=1, max_wait_ms=0.0)
    fake = FakeExpert(config, "cpu", answer=lambda image: 0.9, gate=gate)
    engine = make_engine({"a": fake}, cascade_config([[config]]))
    try:
        payload = marked_payload(5)
        short = make_job(payload, budget_s=0.5)
        short_future = engine.submit(short)
        assert fake.started.wait(10)
        patient = make_job(payload, budget_s=10)
        patient_future = engine.submit(patient)
        assert answered_by(short_future, short.deadline_s).status is Status.PRIOR
        gate.set()
        result = answered_by(patient_future, patient.deadline_s)
        assert result.status is Status.CONFIDENT and result.probability == pytest.approx(0.9)
        wait_for(lambda: held(engine) == (0, 0, 0))
    finally:
        gate.set()
        engine.close()


class SlowStart(FakeExpert):
    """Its first batch (the warm-up) takes `first_s`; every later one is quick."""

    def __init__(self, *args, first_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.first_s = first_s

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        if self.first_s:
            time.sleep(self.first_s)  # simulated cold start of a real model (not a test synchronisation)
            self.first_s = 0.0
        return super().predict_batch(images)


@pytest.mark.slow
def test_a_level_once_measured_too_slow_is_probed_and_used_again():
    fast = expert_config("fast")
    slow = expert_config("slow", warmup_batches=1, expected_latency_ms=None, max_batch=1)
    slow_fake = SlowStart(slow, "cpu", answer=lambda image: 0.95, first_s=1.0)
    engine = make_engine({"fast": FakeExpert(fast, "cpu", answer=lambda image: 0.6), "slow": slow_fake},
                         cascade_config([[fast], [slow]]), latency_stale_s=0.2, latency_horizon_s=1.0)
    try:
        first = engine.submit(make_job(mark=1, budget_s=0.6)).result(10)
        assert first.levels_run == 1 and first.status is Status.DEADLINE  # 1 s warm-up > 0.6 s budget
        until = time.monotonic() + 8.0
        mark = 2
        while time.monotonic() < until:
            result = engine.submit(make_job(mark=mark % 250, seed=mark, budget_s=0.6)).result(10)
            if result.levels_run == 2:
                break
            mark += 1
            time.sleep(0.05)  # traffic arriving over time, as it does; the probe runs in between
        else:
            pytest.fail("the second level was never used again after one slow warm-up")
        assert result.status is Status.CONFIDENT and [a.expert for a in result.answers] == ["fast", "slow"]
    finally:
        engine.close()


@pytest.mark.slow
def test_a_flood_waits_for_admission_before_decoding_so_a_victim_is_decoded_at_once():
    from sn72_tools.client import encode_jpeg

    config = expert_config("a", max_batch=8)
    engine = make_engine({"a": FakeExpert(config, "cpu", answer=lambda image: 0.9)}, cascade_config([[config]]),
                         max_in_flight=4, max_in_flight_per_hotkey=4, decode_workers=1)
    base = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    flood_payloads = []
    for i in range(300):  # distinct full-size frames: each one a real decode
        base[0, 0] = (i % 256, i // 256, 7)
        flood_payloads.append(encode_jpeg(base))
    try:
        flood = [engine.submit(make_job(p, hotkey="flooder", budget_s=60)) for p in flood_payloads]
        time.sleep(0.2)  # the flood arrives first (ordering of arrivals, not a synchronisation)
        victim = make_job(mark=3, hotkey="victim", stake=10.0, budget_s=1.0)
        result = answered_by(engine.submit(victim), victim.deadline_s)
        assert result.status is Status.CONFIDENT, result
        statuses = [f.result(60).status for f in flood]
        assert Status.PRIOR not in statuses and Status.DEADLINE not in statuses, set(statuses)
    finally:
        engine.close()
