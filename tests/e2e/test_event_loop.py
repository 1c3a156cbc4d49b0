"""While one request is being computed, the axon accepts and answers another.

A real bittensor axon on loopback with the miner's handlers and a real engine, queried by a real
dendrite; the expert is a fake gated on an event, so the first request is held as long as the test
wants, deterministically.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from cascade.config import ExpertConfig
from neurons.chain import MetagraphSnapshot, Neuron
from neurons.config import MinerConfig
from neurons.miner import Miner, serve
from sn72_lab.offline import free_port
from sn72_tools.client import axon_info, query
from tests.factories.dendrites import dendrite_of
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_engine, marked_payload
from tests.factories.metagraph import StaticMetagraph


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_a_second_request_is_answered_while_the_first_is_computing(tmp_path, loop_kind):
    """On either event loop the miner offers (engine and HTTP server alike; uvloop by default)."""
    from sn72_lab.offline import ensure_wallet

    release = threading.Event()
    held = threading.Event()

    def held_or_quick(image) -> float:
        if image[0, 0, 0] == 1:  # the first request: hold it until the test releases it
            held.set()
            assert release.wait(30)
        return 0.9

    config = expert_config("a", device="auto", replicas=2, max_batch=1, max_wait_ms=0.0)

    def factory(cfg: ExpertConfig, device: str) -> FakeExpert:
        return FakeExpert(cfg, device, answer=held_or_quick)

    engine = make_engine({"a": factory}, cascade_config([[config]]), event_loop=loop_kind)
    miner_wallet = ensure_wallet(tmp_path, "miner")
    validator = ensure_wallet(tmp_path, "validator")
    snapshot = MetagraphSnapshot.of(72, [Neuron(0, miner_wallet.hotkey.ss58_address, False, 0.0),
                                         Neuron(1, validator.hotkey.ss58_address, True, 100.0)])
    port = free_port()
    miner_config = MinerConfig.model_validate({
        "cascade_file": "unused.yaml",
        "axon": {"host": "127.0.0.1", "port": port, "external_ip": "127.0.0.1", "event_loop": loop_kind},
    })
    miner = Miner(miner_config, engine, StaticMetagraph(snapshot))
    server = serve(miner_config, miner_wallet, miner)
    expected_module = "uvloop" if loop_kind == "uvloop" else "asyncio"
    assert type(engine._loop).__module__.split(".")[0] == expected_module
    assert type(server.server.servers[0]).__module__.split(".")[0] == expected_module  # uvicorn's listener

    async def scenario():
        target = axon_info("127.0.0.1", port, miner_wallet.hotkey.ss58_address)
        async with dendrite_of(validator) as dendrite:
            try:
                first = asyncio.create_task(query(dendrite, target, marked_payload(1), timeout_s=20))
                assert await asyncio.to_thread(held.wait, 20)
                second = await query(dendrite, target, marked_payload(2, seed=2), timeout_s=20)
                assert not first.done(), "the first request should still be computing"
                release.set()
                return await first, second
            finally:
                release.set()

    try:
        first, second = asyncio.run(scenario())
        # the expert says 0.9; the default answer policy sends the decisive 0.99 on that side (cascade/answer.py)
        assert second.status_code == 200 and second.prediction == pytest.approx(0.99)
        assert first.status_code == 200 and first.prediction == pytest.approx(0.99)
    finally:
        release.set()
        server.stop(5.0)
        engine.close()
