"""A refusal the HTTP guard answers itself is counted, not logged as an error, in either dispatch.

A request over its caller's rate limit is answered 429 before its body is read: the guard ends the body early, and
reading it raised Starlette's ClientDisconnect into bittensor's `log_and_handle_error`, one ERROR line per refused
request (an outside test counted 16 for 16 refusals). Any validator over its limit, or anyone who can sign, could fill
the operator's log that way, and the docs promise refusals are counted, not logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator

import pytest
from loguru import logger

from cascade.config import ExpertConfig
from neurons.config import MinerConfig
from neurons.miner import Miner, serve
from sn72_lab.hostile.target import keypair
from sn72_lab.hostile.wire import HostileRequest, Target, build, send_raw
from sn72_lab.offline import ensure_wallet, free_port
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_engine, marked_payload, wait_for
from tests.factories.metagraph import StaticMetagraph, validators_snapshot


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module", params=["direct", "fastapi"])
def limited(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, Miner, object]]:
    folder = tmp_path_factory.mktemp("quiet")
    validator = keypair("quiet-validator")
    wallet = ensure_wallet(folder, "miner")

    def factory(cfg: ExpertConfig, device: str) -> FakeExpert:
        return FakeExpert(cfg, device, answer=lambda image: 0.25)

    engine = make_engine({"a": factory}, cascade_config([[expert_config("a", max_batch=4, max_wait_ms=0.0)]]),
                         cache_size=0)
    port = free_port()
    config = MinerConfig.model_validate({
        "cascade_file": "unused.yaml",
        "axon": {"host": "127.0.0.1", "port": port, "external_ip": "127.0.0.1", "dispatch": request.param},
        "guards": {"rate_per_s": 0.001, "burst": 1.0},  # one request, then every one refused for the test's length
    })
    miner = Miner(config, engine, StaticMetagraph(validators_snapshot(wallet.hotkey.ss58_address, [validator])))
    server = serve(config, wallet, miner)
    try:
        yield Target("127.0.0.1", port, wallet.hotkey.ss58_address), miner, validator
    finally:
        server.stop(5.0)
        engine.close()


def test_requests_over_the_rate_limit_are_refused_429_and_counted_without_an_error_line(limited):
    target, miner, validator = limited
    errors = Errors()
    bittensor_logger = logging.getLogger("bittensor")
    bittensor_logger.addHandler(errors)
    loguru_errors: list[str] = []
    sink = logger.add(lambda message: loguru_errors.append(str(message)), level="ERROR")
    try:
        statuses = []
        for i in range(4):
            request = HostileRequest(signer=validator, image=marked_payload(i, seed=int(time.monotonic_ns() % 9999)),
                                     uuid=str(uuid.uuid4()))
            head, body = build(request, target)
            statuses.append(asyncio.run(send_raw(target, head + body)).status)
    finally:
        bittensor_logger.removeHandler(errors)
        logger.remove(sink)
    assert statuses == [200, 429, 429, 429]
    # counted once each answer is reported, which may follow its arrival at the caller by a moment
    wait_for(lambda: miner.outcomes.snapshot().get("refused_rate_limit") == 3, 5.0)
    assert [line for line in errors.lines + loguru_errors if "ClientDisconnect" in line or "Error" in line] == []
