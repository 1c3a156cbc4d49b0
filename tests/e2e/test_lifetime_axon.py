"""Request lifetimes through the real miner process: bursts are answered in time or counted late where the
client sees them, and SIGTERM finishes every accepted request before the process exits."""

from __future__ import annotations

from pathlib import Path

import pytest

from sn72_lab.loadtest import burst, drain, miner_late
from sn72_lab.offline import run_miner
from sn72_lab.tiny_models import build_tiny_vit, build_tiny_yolo
from sn72_tools.client import encode_jpeg, synthetic_image
from tests.factories.cascades import level, vit_expert
from tests.factories.dendrites import validator_wallets

pytestmark = [pytest.mark.slow, pytest.mark.bench]


def two_level_cascade(models: Path, detector_batch: int, detector_size: int = 320) -> dict:
    """Level 1 never confident, so every request wants level 2, a detector far slower than level 1."""
    vit = build_tiny_vit(models / "tiny-vit")
    yolo = build_tiny_yolo(models / "tiny-yolo")
    return {
        "version": "lifetime-e2e",
        "levels": [
            level(vit_expert(vit, max_batch=16, max_wait_ms=2.0), exit_margin=0.5),
            {"name": "slow", "exit_margin": 0.5, "experts": [
                {"name": "yolo", "backend": "detector", "model": str(yolo), "device": "cpu",
                 "input_size": detector_size, "max_batch": detector_batch, "max_wait_ms": 2.0,
                 "options": {"classes": ["cone"]}}]},
        ],
    }


def payloads(count: int, offset: int = 0) -> list[str]:
    return [encode_jpeg(synthetic_image(offset + i, (320, 240))) for i in range(count)]


def test_a_burst_is_answered_in_time_and_the_late_count_agrees_with_the_client(tmp_path):
    wallets, miner, callers = validator_wallets(tmp_path, 4)
    extra = {"guards": {"rate_per_s": 0.0}, "scheduler": {"cache_size": 0}, "log_level": "WARNING",
             "axon": {"max_connections_per_ip": 1024}}  # the whole burst comes from one address
    # The client shares the two cores: the miner runs niced so the client times its requests as a validator would.
    with run_miner(tmp_path, wallets, miner, two_level_cascade(tmp_path / "models", 4), extra=extra,
                   nice=10) as process:
        # 100 at once: the two cores take in the whole burst well inside the 3 s (p100 ~1.5 s alone); at 150 a
        # busy CI box once took in only 128 before their callers gave up. The full-size bursts (1,000 and 2,000)
        # run in scripts/lifetime_bench.py.
        requests = 100
        report = burst(process.port, process.metrics_port, process.hotkey, callers, payloads(requests), 3.0)
        assert process.alive()
    late_seen_by_miner = miner_late(report)
    assert abs(report.client_timeouts - late_seen_by_miner) <= max(1, requests // 100), report.as_dict()
    assert report.valid >= 0.95 * requests, report.as_dict()
    answered = sum(v for k, v in report.miner.items() if k.startswith("answered_"))
    assert answered == requests and report.miner.get("answered_prior", 0) < requests, report.miner


def test_sigterm_answers_every_accepted_request_before_exiting(tmp_path):
    wallets, miner, callers = validator_wallets(tmp_path, 2)
    extra = {"guards": {"rate_per_s": 0.0}, "scheduler": {"cache_size": 0}, "drain_timeout_s": 30.0}
    # The detector at 640 px (~4x its 320 px cost): the burst is taken in well before it is answered, so the stop
    # finds work to finish even when the client is slow to send (two xdist workers once let the 320 px detector answer
    # all 30 before the signal: "0 answered after the stop signal").
    cascade = two_level_cascade(tmp_path / "models", 1, detector_size=640)
    with run_miner(tmp_path, wallets, miner, cascade, extra=extra) as process:
        requests = 30
        report, code = drain(process, callers, payloads(requests, offset=500), timeout_s=20.0)
    assert code == 0
    assert report.valid == requests, report.as_dict()  # none refused, none disconnected
    drained = [line for line in process.lines if "drained:" in line]
    assert drained and "none left" in drained[0], process.lines[-20:]
    answered_after_stop = int(drained[0].split("drained: ")[1].split()[0])
    assert answered_after_stop >= requests // 3, drained[0]  # the drain had work to finish
