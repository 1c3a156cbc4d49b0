"""Decoding cost bounded before it is paid and while it is paid (the second red-team pass, docs/security.md).

A progressive JPEG of many empty scans costs a pass over its frame per scan: ~90 KB and seconds of decoding. The
header walk refuses such files at once (`decode.max_jpeg_scans`, `decode.max_decode_work`); an image that is
costly within those limits decodes in a worker process that is killed at its request's deadline, one per caller,
while other callers' images decode in the threads. Real decodes, real processes, the real engine and miner.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from cascade.config import DecodeConfig, EngineConfig, ExpertConfig, SchedulerConfig
from cascade.decode import DecodeRefused, decode_image, device_jpeg_or_none
from cascade.engine import Engine
from cascade.experts.base import Expert
from cascade.jpeg_header import plain_jpeg
from cascade.request import Job, Status
from sn72_lab.hostile.payloads import b64
from sn72_lab.hostile_jpeg import many_scans_jpeg, repeated_baseline_scans_jpeg
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_job, on_loop, wait_for
from tests.factories.jpegs import jpeg_bytes, photo

pytestmark = pytest.mark.security

# ~1 s of decoding on the 2-core box (4,000 empty scans over 2000x2000): longer than every budget below.
SLOW = {"width": 2000, "height": 2000, "scans": 4000, "dc_scan": False}
UNLIMITED = {"max_jpeg_scans": 100_000, "max_decode_work": 1 << 50}


def test_a_jpeg_of_many_scans_is_refused_from_its_header_at_once():
    data = many_scans_jpeg(2000, 2000, 1000)  # ~22 KB; 0.23 s of decoding before the limit existed
    began = time.perf_counter()
    with pytest.raises(DecodeRefused, match="scans") as refused:
        decode_image(data, DecodeConfig(), 224)
    assert refused.value.reason == "jpeg_scans"
    assert time.perf_counter() - began < 0.05


def test_a_costly_frame_within_the_scan_limit_is_refused_by_its_work():
    data = many_scans_jpeg(6000, 6000, 90, dc_scan=False)  # 90 scans over 36 MP: 3.3e9 samples
    with pytest.raises(DecodeRefused, match="max_decode_work") as refused:
        decode_image(data, DecodeConfig(max_decode_pixels=40_000_000), 224)
    assert refused.value.reason == "decode_work"


@pytest.mark.slow
def test_ordinary_jpegs_pass_the_scan_and_work_limits():
    for progressive in (False, True):
        data = jpeg_bytes(photo(1080, 1920), progressive=progressive)
        assert decode_image(data, DecodeConfig(), 224).image.shape[:2] == (270, 480)


def test_a_baseline_jpeg_of_repeated_scans_is_not_taken_for_a_plain_one():
    """Sequential JPEGs may hold several scans too: the fast path (no scan count) takes only one-scan files."""
    data = repeated_baseline_scans_jpeg(2000, 2000, 1000)
    assert plain_jpeg(data) is None
    with pytest.raises(DecodeRefused, match="scans"):
        device_jpeg_or_none(data, DecodeConfig(), 224)
    assert plain_jpeg(jpeg_bytes(photo(480, 640))) is not None


# -- the engine: costly images in killable worker processes, shared by caller ----------------------------------------

def start_engine(expert: FakeExpert, **decode: Any) -> Engine:
    def factory(config: ExpertConfig, _device: str) -> Expert:
        return expert

    config = EngineConfig(cascade=cascade_config([[expert.config]]), scheduler=SchedulerConfig(),
                          decode=DecodeConfig(**decode))
    engine = Engine(config, expert_factory=factory)
    engine.start()
    assert engine.path.isolated is not None
    for started in engine.path.isolated.prestart():  # as the miner does, but waited for: timings below exclude it
        started.result(30)
    return engine


def job_of(data: bytes, budget_s: float, hotkey: str) -> Job:
    return make_job(base64.b64encode(data).decode(), budget_s=budget_s, hotkey=hotkey)


def isolated_count(engine: Engine, outcome: str) -> int:
    return int(engine.stats.by_label("decode_isolated", "outcome")[outcome])


@pytest.mark.slow
def test_a_costly_decode_is_killed_at_its_deadline_and_other_callers_are_answered_meanwhile():
    expert = FakeExpert(expert_config("a"), "cpu", answer=lambda image: 0.9)
    engine = start_engine(expert, isolated_workers=1, isolate_above_work=10_000_000, **UNLIMITED)
    try:
        attack = job_of(many_scans_jpeg(**SLOW), budget_s=0.6, hotkey="attacker")
        pending = engine.submit(attack)
        honest = [engine.submit(make_job(mark=i, budget_s=1.0, hotkey="validator")).result(5) for i in range(3)]
        assert all(r.status is Status.CONFIDENT for r in honest), honest  # decoded in the threads meanwhile
        result = pending.result(5)
        assert result.status is Status.PRIOR, result  # answered from the prior at its deadline, not after
        assert time.monotonic() <= attack.deadline_s + 0.1
        wait_for(lambda: isolated_count(engine, "abandoned") == 1 and isolated_count(engine, "restarted") == 1)
        # The worker that replaced the killed one decodes the next costly image.
        costly = jpeg_bytes(photo(1500, 2000), progressive=True)  # ~14 scans over 3 MP: 42e6 samples
        assert engine.submit(job_of(costly, 5.0, "validator")).result(10).status is Status.CONFIDENT
        assert isolated_count(engine, "decoded") == 1
    finally:
        engine.close()
    assert not engine.path.isolated.pids(), "a decode worker outlived the engine"  # type: ignore[union-attr]


@pytest.mark.slow
def test_one_caller_cannot_hold_every_decode_worker(per_hotkey=1):
    expert = FakeExpert(expert_config("a"), "cpu", answer=lambda image: 0.9)
    engine = start_engine(expert, isolated_workers=2, isolated_per_hotkey=per_hotkey, isolate_above_work=10_000_000,
                          **UNLIMITED)
    try:
        attacks = [engine.submit(job_of(many_scans_jpeg(**{**SLOW, "scans": 6000 + i}), 2.0, "attacker"))
                   for i in range(3)]
        gate = engine.path.isolated.gate  # type: ignore[union-attr]
        wait_for(lambda: on_loop(engine, lambda: gate.per_hotkey["attacker"] == per_hotkey))
        costly = jpeg_bytes(photo(1500, 2000), progressive=True)
        honest = engine.submit(job_of(costly, 0.8, "validator")).result(5)
        assert honest.status is Status.CONFIDENT, honest  # the second worker was kept for another caller
        for attack in attacks:
            assert attack.result(5).status in (Status.CONFIDENT, Status.PRIOR)  # one at a time, by their deadlines
    finally:
        engine.close()


# -- the real miner, as the issue found it -----------------------------------------------------------------------------

@pytest.mark.slow
def test_many_scan_jpegs_are_refused_at_once_beside_the_validator(hostile):
    """Three ~160 KB 6000x6000 progressive JPEGs of 2,000 scans at once (distinct, so nothing is coalesced): each
    took ~4 s of a decode thread on this box, and the validator's requests waited behind them."""
    attacks = [b64(many_scans_jpeg(6000, 6000, 2000 + i)) for i in range(3)]
    with hostile.survives(), hostile.validator_load(rate_per_s=2.0) as load:
        started_s = time.monotonic()
        outcomes = hostile.ask(hostile.prober(), attacks)
        time.sleep(max(0.0, started_s + 3.0 - time.monotonic()))
        stats = load.stats(started_s, time.monotonic())
    for outcome in outcomes:
        assert outcome.status_code == 400 and "scans" in outcome.message, (outcome.status_code, outcome.message)
        assert outcome.latency_s < 1.0, outcome.latency_s
    assert stats.sent >= 3 and stats.answered == stats.sent and stats.p99_ms < 1000, stats.summary()
