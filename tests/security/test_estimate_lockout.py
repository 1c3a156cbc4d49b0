"""No estimate can lock the miner out (the outside attack of 4 Dec), and abnormal JPEG headers cost nothing.

The attack: one permit holder sent, inside its rate limit, images that took the whole of their (long) timeout to
answer. The HTTP layer's service-time estimate, one for all callers and with no notion of age, became that timeout;
from then on every request with a shorter timeout (the honest validator's 9 s) was refused 408 "request waited past
its timeout" in milliseconds, nothing was processed, so no sample ever came to correct it: minutes after the attack,
on an idle miner, until a restart. The images were JPEGs with 9 MB of 0xFF fill bytes, which Pillow's header parser
reads one at a time (~3 s of Python each).

A real bittensor axon with the miner's handlers on loopback, requests signed by real keys over raw sockets
(sn72_lab/hostile/wire.py), the real engine behind it with a fake expert that holds images marked SLOW until the
test opens a gate: a slow answer is then provably slow for as long as the test wants.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cascade import jpeg_header
from cascade.config import DecodeConfig, ExpertConfig
from cascade.decode import DecodeRefused, decode_image
from neurons import deadlines
from neurons.config import MinerConfig
from neurons.miner import Miner, serve
from sn72_lab.hostile.target import keypair
from sn72_lab.hostile.wire import HostileRequest, Target, send
from sn72_lab.offline import ensure_wallet, free_port
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_engine, marked_payload, wait_for
from tests.factories.metagraph import StaticMetagraph, validators_snapshot

pytestmark = pytest.mark.security

SLOW = 9  # the mark of images the fake expert holds until the gate opens
ANSWER = 0.9  # the fake expert's answer (the prior is 0.5)
SLOW_COUNT = 6
_SEEDS = itertools.count(1)


@dataclass
class Served:
    target: Target
    server: Any
    miner: Miner
    attacker: Any
    honest: Any
    gate: threading.Event

    def request(self, signer: Any, mark: int = 1, timeout_s: float = 9.0, image: str | None = None) -> HostileRequest:
        return HostileRequest(signer=signer, image=image or marked_payload(mark, seed=next(_SEEDS)),
                              uuid=str(uuid.uuid4()), timeout_s=timeout_s)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("lockout")
    attacker, honest = keypair("lockout-attacker"), keypair("lockout-honest")
    miner_wallet = ensure_wallet(folder, "miner")
    snapshot = validators_snapshot(miner_wallet.hotkey.ss58_address, [attacker, honest])
    port = free_port()
    config = MinerConfig.model_validate({
        "cascade_file": "unused.yaml", "guards": {"rate_per_s": 0.0},
        "axon": {"host": "127.0.0.1", "port": port, "external_ip": "127.0.0.1"},
    })
    gate = threading.Event()

    def answer(image: Any) -> float:
        if int(image[0, 0, 0]) == SLOW:
            assert gate.wait(30), "the test never opened the gate"
        return ANSWER

    def factory(cfg: ExpertConfig, device: str) -> FakeExpert:
        return FakeExpert(cfg, device, answer=answer)

    # One image per batch and a replica per slow image and more: the held images never hold an honest answer.
    engine = make_engine({"a": factory}, cascade_config([[expert_config("a", max_batch=1, max_wait_ms=0.0,
                                                                        replicas=SLOW_COUNT + 2, device="auto")]]),
                         cache_size=0)
    miner = Miner(config, engine, StaticMetagraph(snapshot))
    done = Served(Target("127.0.0.1", port, miner_wallet.hotkey.ss58_address), None, miner, attacker, honest, gate)
    done.server = serve(config, miner_wallet, miner)
    try:
        yield done
    finally:
        gate.set()
        done.server.stop(5.0)
        engine.close()


def _prediction(body: bytes) -> float | None:
    try:
        return json.loads(body).get("prediction")  # type: ignore[no-any-return]
    except ValueError:
        return None


@pytest.mark.slow
def test_slow_answers_to_one_caller_never_lock_out_the_others(served):
    """A burst of requests that take their whole 3 s timeout, from one caller; then an honest caller's requests with
    a 2 s timeout (shorter than what the slow ones took) are answered by the model, at once. Before: 408 each, in
    milliseconds, for as long as the process lived."""
    served.gate.clear()
    slow = [served.request(served.attacker, mark=SLOW, timeout_s=3.0) for _ in range(SLOW_COUNT)]

    async def burst() -> list[Any]:
        return list(await asyncio.gather(*(send(request, served.target, timeout_s=10.0) for request in slow)))

    try:
        replies = asyncio.run(burst())  # each answered at its deadline (the prior): ~2.9 s of service
    finally:
        served.gate.set()
    assert [reply.status for reply in replies] == [200] * SLOW_COUNT, [(r.status, r.body[:120]) for r in replies]
    wait_for(lambda: served.server.guard.active == 0)

    async def honest() -> list[Any]:
        return [await send(served.request(served.honest, mark=1 + i, timeout_s=2.0), served.target, timeout_s=5.0)
                for i in range(4)]

    answers = asyncio.run(honest())
    assert [reply.status for reply in answers] == [200] * 4, [(r.status, r.body[:120]) for r in answers]
    assert all(_prediction(reply.body) == pytest.approx(ANSWER, abs=0.3) for reply in answers), \
        [_prediction(reply.body) for reply in answers]
    assert all(reply.elapsed_s < 1.5 for reply in answers), [reply.elapsed_s for reply in answers]
    # The slow caller itself, idle for a few seconds, gets answers with a 9 s timeout (a validator's) too.
    again = asyncio.run(send(served.request(served.attacker, mark=2, timeout_s=9.0), served.target, timeout_s=12.0))
    assert again.status == 200 and _prediction(again.body) == pytest.approx(ANSWER, abs=0.3), again


def _jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    array = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_jpeg_padded_with_fill_bytes_is_refused_at_once(served):
    """9 MB of 0xFF fill bytes before a marker (legal, and ~3 s of Python in Pillow's header parser): 400 in well
    under a second, counted in decode_refused{reason="jpeg_header"}; the honest caller beside it is answered."""
    payload = base64.b64encode(b"\xff\xd8" + b"\xff" * 9_000_000 + _jpeg()[2:]).decode()
    stats = served.miner.engine.stats
    before = stats._decode_refused.labels("jpeg_header")._value.get()

    async def both() -> list[Any]:
        return list(await asyncio.gather(
            send(served.request(served.attacker, image=payload, timeout_s=12.0), served.target, timeout_s=15.0),
            send(served.request(served.honest, mark=3, timeout_s=9.0), served.target, timeout_s=12.0)))

    refused, answered = asyncio.run(both())
    assert refused.status == 400, (refused.status, refused.body[:200])
    assert b"fill or junk bytes" in refused.body or b"fill or junk bytes" in str(refused.headers).encode()
    assert refused.elapsed_s < 1.5, refused.elapsed_s
    assert stats._decode_refused.labels("jpeg_header")._value.get() == before + 1
    assert answered.status == 200 and _prediction(answered.body) == pytest.approx(ANSWER, abs=0.3)


@pytest.mark.parametrize("name, data", [
    ("fill", b"\xff\xd8" + b"\xff" * 9_000_000),
    ("junk", b"\xff\xd8\xff\xfe\x00\x02" + b"\x00" * 9_000_000),
    ("empty comments", b"\xff\xd8" + b"\xff\xfe\x00\x02" * 2_200_000),
    ("escaped", b"\xff\xd8" + b"\xff\x00" * 4_000_000),
    ("restart markers", b"\xff\xd8" + b"\xff\xd0" * 3_000_000),
])
def test_abnormal_jpeg_headers_are_refused_from_a_cheap_scan(name, data):
    """Each before Pillow sees it, in milliseconds, with reason jpeg_header (Pillow took seconds on each)."""
    data += _jpeg()[2:]
    started = time.perf_counter()
    with pytest.raises(DecodeRefused) as refused:
        decode_image(data, DecodeConfig())
    assert time.perf_counter() - started < 0.1, name
    assert refused.value.reason == "jpeg_header"


def test_ordinary_jpeg_headers_pass_the_scan():
    """What encoders write is never refused: baseline, progressive, EXIF, ICC, comments, a few fill bytes."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    variants = []
    for options in ({}, {"progressive": True}, {"exif": exif.tobytes()}, {"icc_profile": b"\0" * 200_000},
                    {"comment": b"x" * 60_000, "quality": 95}):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **options)
        variants.append(buffer.getvalue())
    data = variants[0]
    variants.append(data[:2] + b"\xff" * 64 + data[2:])  # a few fill bytes: legal, and some encoders pad
    for data in variants:
        assert jpeg_header.header_problem(data) is None
        decode_image(data, DecodeConfig())


def test_estimates_forget_with_time_and_never_cross_callers():
    """The estimators alone: a slow period stops steering decisions by itself (no new sample needed), and one
    caller's samples never judge another."""
    service = deadlines.ServiceTime(half_life_s=5.0)
    for i in range(64):
        service.record("attacker", 11.3, now_s=100.0 + i * 0.1)
    assert service.estimate_s("attacker", now_s=106.4) > 9.0
    assert service.estimate_s("honest", now_s=106.4) == 0.0
    assert service.estimate_s(None, now_s=106.4) == 0.0
    assert service.estimate_s("attacker", now_s=106.4 + 5.0) < 9.0 * 0.7  # one half-life later
    lag = deadlines.ResponseLag(0.05, 6.0)
    for i in range(64):
        lag.record(5.0, now_s=100.0 + i * 0.1)
    assert lag.reserve_s(now_s=106.4) == 6.0
    assert lag.reserve_s(now_s=106.4 + 120.0) < 0.1
