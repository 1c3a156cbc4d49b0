"""Experts that fail, hang or run out of memory: requests are still answered in time, the replica is
taken out of service after repeated trouble, retried after a cool-down, and its state is visible."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cascade.process_metrics import build_registry
from cascade.request import Status
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_engine, make_job, wait_for


def healthy_gauge(engine, replica: str) -> float:
    text = generate_latest(build_registry(engine)).decode()
    for family in text_string_to_metric_families(text):
        if family.name == "sn72_miner_replica_healthy":
            for sample in family.samples:
                if sample.labels["replica"] == replica:
                    return sample.value
    raise AssertionError(f"no health series for {replica}")


def test_an_expert_that_keeps_failing_is_skipped_then_retried_after_its_cool_down():
    broken = threading.Event()
    broken.set()
    flaky_config = expert_config("flaky", max_batch=1, max_wait_ms=0.0)
    backup_config = expert_config("backup")
    flaky = FakeExpert(flaky_config, "cpu", answer=lambda image: 0.95, fail=lambda n: broken.is_set())
    backup = FakeExpert(backup_config, "cpu", answer=lambda image: 0.1)
    engine = make_engine({"flaky": flaky, "backup": backup}, cascade_config([[flaky_config], [backup_config]]),
                         unhealthy_after_failures=3, unhealthy_cooldown_s=0.5)
    try:
        for mark in (1, 2, 3):
            result = engine.submit(make_job(mark=mark)).result(10)
            assert result.failures == ("flaky:error",) and [a.expert for a in result.answers] == ["backup"]
        assert engine.replica_states()["flaky@cpu"] == "unhealthy"
        assert healthy_gauge(engine, "flaky@cpu") == 0.0
        tried = len(flaky.batches)
        started = time.monotonic()
        skipped = engine.submit(make_job(mark=4)).result(10)
        assert len(flaky.batches) == tried, "an unhealthy replica was sent a batch"
        assert skipped.levels_run == 1 and [a.expert for a in skipped.answers] == ["backup"]
        assert time.monotonic() - started < 0.5
        assert engine.stats.skipped_levels[(0, "unavailable")] == 1
        broken.clear()  # the fault clears; after the cool-down a request tries the replica again
        wait_for(lambda: engine.replica_states()["flaky@cpu"] == "retrying", timeout_s=5)
        recovered = engine.submit(make_job(mark=5)).result(10)
        assert recovered.status is Status.CONFIDENT and [a.expert for a in recovered.answers] == ["flaky"]
        assert engine.replica_states()["flaky@cpu"] == "healthy" and healthy_gauge(engine, "flaky@cpu") == 1.0
    finally:
        engine.close()


def test_a_hung_expert_is_cut_at_the_deadline_then_skipped_without_waiting():
    gate = threading.Event()  # never opened while the test runs: the first batch hangs
    stuck_config = expert_config("stuck", max_batch=1, max_wait_ms=0.0)
    backup_config = expert_config("backup")
    stuck = FakeExpert(stuck_config, "cpu", answer=lambda image: 0.95, gate=gate)
    engine = make_engine({"stuck": stuck, "backup": FakeExpert(backup_config, "cpu", answer=lambda image: 0.1)},
                         cascade_config([[stuck_config], [backup_config]], prior=0.3), hang_min_ms=200.0)
    try:
        job = make_job(mark=1, budget_s=0.6)
        first = engine.submit(job).result(10)
        assert time.monotonic() <= job.deadline_s + 0.05
        assert first.status is Status.PRIOR and first.failures == ("stuck:timeout",)
        started = time.monotonic()
        second = engine.submit(make_job(mark=2, budget_s=5.0)).result(10)
        assert time.monotonic() - started < 1.0, "the request waited on a hung replica"
        assert [a.expert for a in second.answers] == ["backup"] and second.probability < 0.5
        assert engine.replica_states()["stuck@cpu"] == "unhealthy"
    finally:
        gate.set()
        engine.close()


class RunsOutOfMemory(FakeExpert):
    """Fails any batch larger than `fits` the way torch does on a full device."""

    def __init__(self, *args, fits: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fits = fits

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        answers = super().predict_batch(images)
        if len(images) > self.fits:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return answers


def test_out_of_memory_shrinks_the_batches_and_every_request_is_still_answered():
    config = expert_config("big", max_batch=8, max_wait_ms=0.0)
    backup_config = expert_config("backup")
    big = RunsOutOfMemory(config, "cpu", answer=lambda image: 0.95, fits=2)
    engine = make_engine({"big": big, "backup": FakeExpert(backup_config, "cpu", answer=lambda image: 0.1)},
                         cascade_config([[config], [backup_config]]))
    batcher = engine.levels[0].batchers["big"][0]

    def queue_behind_a_held_batch(marks: range) -> list:
        big.gate, big.started = threading.Event(), threading.Event()
        futures = [engine.submit(make_job(mark=marks[0]))]
        assert big.started.wait(10)
        futures += [engine.submit(make_job(mark=m)) for m in marks[1:]]
        wait_for(lambda: engine.queue_depths()["big@cpu"] == len(marks) - 1)
        big.gate.set()
        return [f.result(10) for f in futures]

    try:
        first = queue_behind_a_held_batch(range(1, 10))  # one batch of 1, then one of 8: out of memory
        assert [len(b) for b in big.batches] == [1, 8] and batcher.batch_cap == 4
        second = queue_behind_a_held_batch(range(20, 27))  # 1, then 4 (out of memory again), then 2
        assert [len(b) for b in big.batches[2:]] == [1, 4, 2] and batcher.batch_cap == 2
        for result in first + second:  # each answered: by the big expert, or by the next level after an OOM
            assert result.status in (Status.CONFIDENT, Status.EXHAUSTED) and result.answers, result
        assert sum("big:error" in r.failures for r in first + second) == 12  # the batches of 8 and 4
        later = [engine.submit(make_job(mark=40 + i)) for i in range(6)]
        assert all(f.result(10).answers[0].expert == "big" for f in later)
        assert engine.replica_states()["big@cpu"] == "healthy"
    finally:
        if big.gate is not None:
            big.gate.set()
        engine.close()
