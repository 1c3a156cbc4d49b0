"""The nonce record of the miner's axon, in process: bounded under a flood, configurable, and reset-proof (the second
red-team pass, docs/security.md).

A real bittensor axon with the miner's handlers (`neurons.miner.serve`) on loopback, requests built by real
bittensor dendrites and signed by the callers' keys (sn72_lab/hostile/wire.py). The engine behind it answers with a
fake expert: it is not what is tested here, and it keeps a flood of hundreds of requests cheap.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

import neurons.miner as miner_module
from cascade.config import ExpertConfig
from neurons.config import MinerConfig
from neurons.miner import Miner, serve
from sn72_lab.hostile.target import keypair
from sn72_lab.hostile.wire import HostileRequest, Response, Target, build, send, send_raw
from sn72_lab.offline import ensure_wallet, free_port
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_engine, marked_payload
from tests.factories.metagraph import StaticMetagraph, validators_snapshot

pytestmark = pytest.mark.security

NS_PER_S = 1_000_000_000
PAYLOAD = marked_payload(3)


@dataclass
class Served:
    target: Target
    axon: Any
    validators: list[Any]  # keypairs of registered validators

    def send(self, request: HostileRequest) -> Response:
        return asyncio.run(send(request, self.target))


@contextmanager
def serving(folder, validators: int = 2, **axon: Any) -> Iterator[Served]:
    """The miner's axon with `axon` settings, no rate limit (a flood must reach the record, not stop at 429)."""
    signers = [keypair(f"nonce-validator-{i}") for i in range(validators)]
    miner_wallet = ensure_wallet(folder, "miner")
    snapshot = validators_snapshot(miner_wallet.hotkey.ss58_address, signers)
    port = free_port()
    config = MinerConfig.model_validate({
        "cascade_file": "unused.yaml", "guards": {"rate_per_s": 0.0},
        "axon": {"host": "127.0.0.1", "port": port, "external_ip": "127.0.0.1", **axon},
    })

    def factory(cfg: ExpertConfig, device: str) -> FakeExpert:
        return FakeExpert(cfg, device, answer=lambda image: 0.9)

    engine = make_engine({"a": factory}, cascade_config([[expert_config("a", max_wait_ms=0.0)]]))
    metagraph: Any = StaticMetagraph(snapshot)  # a fixed snapshot stands in for the chain
    server = serve(config, miner_wallet, Miner(config, engine, metagraph))
    try:
        yield Served(Target("127.0.0.1", port, miner_wallet.hotkey.ss58_address), server.axon, signers)
    finally:
        server.stop(5.0)
        engine.close()


def fresh(signer: Any) -> HostileRequest:
    """A fresh dendrite uuid per request: every one is a new (uuid, nonce) for the record."""
    return HostileRequest(signer=signer, image=PAYLOAD, uuid=str(uuid.uuid4()))


@pytest.mark.slow
def test_the_record_stays_bounded_under_a_flood_and_nothing_it_forgets_replays(tmp_path):
    bound = 64
    with serving(tmp_path, nonce_record_size=bound) as served:
        flooder, honest = served.validators
        record = served.axon.nonce_record
        early = build(HostileRequest(signer=honest, image=PAYLOAD), served.target)  # signed before the flood
        first = build(fresh(flooder), served.target)

        async def flood(batches: int, size: int) -> list[int | str]:
            statuses = [(await send_raw(served.target, b"".join(first))).status]
            for _ in range(batches):
                replies = await asyncio.gather(*(send(fresh(flooder), served.target) for _ in range(size)))
                statuses += [r.status for r in replies]
                assert len(record) <= bound and record.signers() <= 2, (len(record), record.signers())
            return statuses

        statuses = asyncio.run(flood(batches=20, size=20))
        # 401 only for stragglers of the flooder's own that arrive below its raised floor; nothing else refused.
        assert set(statuses) <= {200, 401} and statuses.count(200) >= 0.9 * len(statuses), statuses
        assert len(record) == bound

        async def afterwards() -> list[Response]:
            return [await send_raw(served.target, b"".join(first)),  # forgotten by the bound: still refused
                    await send_raw(served.target, b"".join(early)),  # the honest caller's own floor never moved
                    await send_raw(served.target, b"".join(early))]  # and its record still refuses a replay

        replayed_flood, honest_late, honest_replay = asyncio.run(afterwards())
        assert replayed_flood.status == 401, (replayed_flood.status, replayed_flood.message)
        assert honest_late.status == 200, (honest_late.status, honest_late.message)
        assert honest_replay.status == 401, (honest_replay.status, honest_replay.message)


def test_the_window_follows_the_configuration(tmp_path):
    with serving(tmp_path, validators=1, nonce_max_age_s=2.0, nonce_future_s=0.5) as served:
        signer = served.validators[0]

        def signed(offset_s: float) -> int | str:
            request = HostileRequest(signer=signer, image=PAYLOAD, uuid=str(uuid.uuid4()),
                                     nonce_ns=time.time_ns() + int(offset_s * NS_PER_S))
            return served.send(request).status

        assert [signed(-3.0), signed(-1.0), signed(2.0), signed(0.2)] == [401, 200, 401, 200]


def test_a_request_signed_before_the_miner_process_started_is_refused(tmp_path, monkeypatch):
    """A restart empties the record: what was signed for the previous process must not replay against this one."""
    signer = keypair("nonce-validator-0")  # the validator `serving` registers
    miner_hotkey = ensure_wallet(tmp_path, "miner").hotkey.ss58_address  # the wallet `serving` reuses
    captured = build(HostileRequest(signer=signer, image=PAYLOAD), Target("127.0.0.1", 1, miner_hotkey))
    monkeypatch.setattr(miner_module, "_STARTED_NS", time.time_ns())  # this "process" starts after the capture
    with serving(tmp_path, validators=1) as served:
        replayed = asyncio.run(send_raw(served.target, b"".join(captured)))
        answered = served.send(HostileRequest(signer=signer, image=PAYLOAD))
    assert replayed.status == 401 and "process" in replayed.message, (replayed.status, replayed.message)
    assert answered.status == 200, (answered.status, answered.message)
