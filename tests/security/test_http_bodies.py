"""Request bodies at the HTTP layer (the outside attack of 4 Dec, defects B and C), in process.

A real bittensor axon with the miner's handlers behind the HTTP guard on loopback (as tests/security/test_http_slots.py
builds it), a fake expert that answers at once (or holds images marked HELD until the test opens a gate), requests
signed by real keys over raw sockets (sn72_lab/hostile/wire.py). What is checked:

- B: a chunked body is never parsed (1-byte chunks cost the event loop a Python round per byte): 411 at once, 400
  with a Content-Length too; a request already refused (403 here) is read no further: its connection ends.
- C: a body's JSON structure is bounded as it arrives, before any parse (a million keys used to stall the loop);
  the bytes of bodies in flight are bounded (`HttpGuard.bodies`), given back when each request is over.
- a request over its caller's rate limit is answered 429 without its body (a slow one used to hold its slot until
  the body deadline, then 408, never charged a refusal); 404 and 405 name the method and path that were sent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cascade.config import ExpertConfig
from neurons.config import MinerConfig
from neurons.miner import Miner, serve
from sn72_lab.hostile.target import keypair
from sn72_lab.hostile.wire import CLOSED, HostileRequest, Target, build, connect, read_response, send, send_raw
from sn72_lab.offline import ensure_wallet, free_port
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_engine, marked_payload, wait_for
from tests.factories.metagraph import StaticMetagraph, validators_snapshot

pytestmark = pytest.mark.security

HELD = 7
BODY_TIMEOUT_S = 2.0
MAX_REQUEST_BYTES = 1 << 20  # the body budget is then 4 MiB, 2 MiB per caller
_SEEDS = itertools.count(1)


@dataclass
class Bodies:
    target: Target
    server: Any
    miner: Miner
    validators: list[Any]  # registered with a permit; validators[-1] has a rate bucket of 1 (see the fixture)
    gate: threading.Event

    def request(self, signer: Any, mark: int = 1, **tamper: Any) -> HostileRequest:
        return HostileRequest(signer=signer, image=marked_payload(mark, seed=next(_SEEDS)), uuid=str(uuid.uuid4()),
                              **tamper)

    def count(self, outcome: str) -> float:
        return self.miner.outcomes.get(outcome)


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bodies]:
    folder = tmp_path_factory.mktemp("bodies")
    signers = [keypair(f"bodies-validator-{i}") for i in range(3)]
    miner_wallet = ensure_wallet(folder, "miner")
    snapshot = validators_snapshot(miner_wallet.hotkey.ss58_address, signers)
    port = free_port()
    config = MinerConfig.model_validate({
        "cascade_file": "unused.yaml", "guards": {"rate_per_s": 0.05, "burst": 1000.0},
        "axon": {"host": "127.0.0.1", "port": port, "external_ip": "127.0.0.1", "max_concurrent_requests": 8,
                 "body_timeout_s": BODY_TIMEOUT_S, "max_request_bytes": MAX_REQUEST_BYTES},
        "decode": {"max_payload_bytes": MAX_REQUEST_BYTES // 2},
    })
    gate = threading.Event()
    gate.set()

    def answer(image: Any) -> float:
        if int(image[0, 0, 0]) == HELD:
            assert gate.wait(30), "the test never opened the gate"
        return 0.9

    def factory(cfg: ExpertConfig, device: str) -> FakeExpert:
        return FakeExpert(cfg, device, answer=answer)

    engine = make_engine({"a": factory}, cascade_config([[expert_config("a", max_batch=1, max_wait_ms=0.0,
                                                                        replicas=9, device="auto")]]), cache_size=0)
    miner = Miner(config, engine, StaticMetagraph(snapshot))
    served = Bodies(Target("127.0.0.1", port, miner_wallet.hotkey.ss58_address), None, miner, signers, gate)
    served.server = serve(config, miner_wallet, miner)
    # The last validator's bucket: one request, then a token every 20 s (the others keep the full burst).
    miner.core.limiter._buckets[signers[-1].ss58_address] = (1.0, time.monotonic())
    try:
        yield served
    finally:
        gate.set()
        served.server.stop(5.0)
        engine.close()


def _chunked_head(bodies: Bodies, signer: Any, *extra: bytes) -> bytes:
    head, _ = build(bodies.request(signer, chunked=1), bodies.target)
    return head[:-2] + b"".join(line + b"\r\n" for line in extra) + b"\r\n"


async def _answer_then_eof(bodies: Bodies, data: bytes, then: bytes = b"", for_s: float = 0.0,
                           source_ip: str | None = None) -> tuple[int | str, float]:
    """Send `data`, read the answer, then keep sending `then` every 50 ms for up to `for_s`: the status and how
    long after the answer the server ended the connection (inf if it never did)."""
    reader, writer = await connect(bodies.target, source_ip)
    try:
        writer.write(data)
        await writer.drain()
        response = await read_response(reader, time.monotonic(), 5.0)
        answered_s = time.monotonic()
        while time.monotonic() - answered_s < for_s:
            if reader.at_eof():
                return response.status, time.monotonic() - answered_s
            try:
                writer.write(then)
                await writer.drain()
            except ConnectionError:
                return response.status, time.monotonic() - answered_s
            try:
                if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                    return response.status, time.monotonic() - answered_s
            except TimeoutError:
                pass
            except ConnectionError:
                return response.status, time.monotonic() - answered_s
        return response.status, float("inf")
    finally:
        writer.close()


def test_a_chunked_body_is_refused_411_and_never_parsed(bodies):
    """Defect B: 64 KB of 1-byte chunks after the head (a valid, signed request): 411 at once, the chunks never
    parsed (the connection ends within the linger while the client keeps sending), counted `refused_chunked`."""
    before = bodies.count("refused_chunked")
    head = _chunked_head(bodies, bodies.validators[0])
    status, closed_after_s = asyncio.run(_answer_then_eof(bodies, head + b"1\r\nA\r\n" * 10_000, b"1\r\nA\r\n" * 1000,
                                                          for_s=4.0))
    assert status == 411, status
    assert closed_after_s <= 2.0, f"the connection was still read {closed_after_s:.1f} s after the 411"
    wait_for(lambda: bodies.count("refused_chunked") == before + 1)


def test_content_length_and_chunked_together_are_refused_400(bodies):
    """Request-smuggling hygiene: both framings in one head is refused, whichever h11 would have believed."""
    head = _chunked_head(bodies, bodies.validators[0], b"Content-Length: 5")
    reply = asyncio.run(send_raw(bodies.target, head + b"5\r\nhello\r\n0\r\n\r\n", timeout_s=5.0))
    assert reply.status == 400 and b"Transfer-Encoding" in reply.body, (reply.status, reply.body)


def test_a_refused_request_is_read_no_further(bodies):
    """Defect B: a stranger answered 403 while its body still arrives: the connection ends after the answer (it was
    kept open, and the body parsed, for as long as the stranger kept sending)."""
    request = HostileRequest(signer=keypair("bodies-stranger"), image="A" * 1000, content_length=MAX_REQUEST_BYTES)
    head, body = build(request, bodies.target)
    status, closed_after_s = asyncio.run(_answer_then_eof(bodies, head + body[:100], b"A" * 100, for_s=4.0))
    assert status == 403, status
    assert closed_after_s <= 2.0, f"the refused request's body was still read {closed_after_s:.1f} s later"


def test_a_small_body_trickled_after_its_refusal_ends_the_connection_soon_and_counts_once(bodies):
    """The outside test of 6 December: a stranger's 403 came at once, but the rest of its small body (under the size
    a refused request's body is drained at) trickling in was taken for the next request's first bytes: the
    connection was held to the header deadline (10 s here) and the one request counted twice (`refused_unregistered`
    and `closed_header_timeout`)."""
    request = HostileRequest(signer=keypair("bodies-trickler"), image="A" * 1000)
    head, body = build(request, bodies.target)
    before = bodies.count("closed_header_timeout")
    status, closed_after_s = asyncio.run(_answer_then_eof(bodies, head + body[:100], b"A", for_s=4.0))
    assert status == 403, status
    assert closed_after_s <= 2.0, f"the refused request's body was still taken {closed_after_s:.1f} s later"
    assert bodies.count("closed_header_timeout") == before


@pytest.mark.parametrize("shape", ["keys", "list", "nesting", "escapes"])
def test_a_body_of_abnormal_json_structure_is_refused_before_it_is_parsed(bodies, shape):
    """Defect C: a signed body of 50,000 keys, a 100,000-element list, 10,000 nested lists or 100,000 escapes:
    400 `refused_body_structure` (the 1M-key body stalled the event loop and held 600 MB)."""
    junk = {"keys": b"{" + b",".join(b'"k%d":0' % i for i in range(50_000)) + b"}",
            "list": b"[" + b",".join([b"0"] * 100_000) + b"]",
            "nesting": b"[" * 10_000 + b"]" * 10_000,
            "escapes": b'"' + b"\\u0041" * 100_000 + b'"'}[shape]
    request = bodies.request(bodies.validators[0])
    _, honest = build(request, bodies.target)
    request.body = honest[:-1] + b', "junk": ' + junk + b"}"  # the signature covers the image's hash: no matter
    head, body = build(request, bodies.target)
    before = bodies.count("refused_body_structure")
    reply = asyncio.run(send_raw(bodies.target, head + body, timeout_s=10.0))
    assert reply.status == 400 and b"JSON structure" in reply.body, (reply.status, reply.body[:200])
    wait_for(lambda: bodies.count("refused_body_structure") == before + 1)


def test_an_honest_body_is_well_within_the_structure_bound(bodies):
    request = bodies.request(bodies.validators[0])
    _, body = build(request, bodies.target)
    structure = sum(body.count(mark) for mark in (b"{", b"[", b":", b",", b"\\"))
    assert structure * 8 < bodies.server.guard.limits.max_body_structure, structure
    assert asyncio.run(send(request, bodies.target, timeout_s=10.0)).status == 200


def test_bodies_in_flight_hold_their_declared_bytes_until_they_are_over(bodies):
    """Defect C: the bytes of bodies in flight are bounded (4 x max_request_bytes here, half per caller): held
    requests hold their Content-Length, given back when they are answered."""
    guard = bodies.server.guard
    assert guard.bodies.total == 4 * MAX_REQUEST_BYTES and guard.bodies.per_caller == 2 * MAX_REQUEST_BYTES
    bodies.gate.clear()
    try:
        requests = [bodies.request(bodies.validators[1], mark=HELD) for _ in range(2)]
        lengths = [len(build(r, bodies.target)[1]) for r in requests]

        async def held() -> list[int | str]:
            tasks = [asyncio.ensure_future(send(r, bodies.target, timeout_s=15.0)) for r in requests]
            await asyncio.to_thread(wait_for, lambda: guard.bodies.used == sum(lengths))
            bodies.gate.set()
            return [(await t).status for t in tasks]

        assert asyncio.run(held()) == [200, 200]
    finally:
        bodies.gate.set()
    wait_for(lambda: guard.bodies.used == 0 and guard.active == 0)


def test_one_caller_cannot_take_the_whole_body_budget():
    """The budget's per-caller share: a caller past half the budget waits, another caller's body goes in at once."""
    from neurons.request_slots import ByteBudget

    async def scenario() -> tuple[bool, bool]:
        budget = ByteBudget(100)
        await budget.reserve("a", 50)
        second_a = asyncio.ensure_future(budget.reserve("a", 10))
        await asyncio.sleep(0.01)
        other = await asyncio.wait_for(budget.reserve("b", 40), 1.0)
        waiting = not second_a.done()
        budget.release("a", 50)
        await asyncio.wait_for(second_a, 1.0)
        return waiting, other == 40

    assert asyncio.run(scenario()) == (True, True)


def test_a_request_over_its_rate_limit_is_answered_429_without_its_body(bodies):
    """A permit holder past its bucket, sending its body slowly: 429 at once, not 408 after the body deadline (the
    slot was held meanwhile and the refusal was never counted as a rate limit)."""
    signer = bodies.validators[-1]
    assert asyncio.run(send(bodies.request(signer), bodies.target, timeout_s=10.0)).status == 200  # its one token
    before = bodies.count("refused_rate_limit")
    head, body = build(bodies.request(signer), bodies.target)
    started_s = time.monotonic()
    status, _ = asyncio.run(_answer_then_eof(bodies, head + body[:10]))
    assert status == 429, status
    assert time.monotonic() - started_s < BODY_TIMEOUT_S * 0.75
    wait_for(lambda: bodies.count("refused_rate_limit") == before + 1)


@pytest.mark.parametrize(("method", "path", "status", "shown"), [
    ("PUT", "/ImageSynapse", 405, b"method not allowed: PUT"),
    ("POST", "/NotA/Route", 404, b"no such route: POST /NotA/Route"),
    # a well-formed name the axon does not serve: bittensor's own 404 listed every synapse served, counted nowhere
    ("POST", "/NotASynapse", 404, b"no such route: POST /NotASynapse"),
    ("GET", "/%ff%00" + "x" * 200, 404, b"no such route: GET /%ff%00xxx"),
])
def test_404_and_405_name_the_method_and_path_sent(bodies, method, path, status, shown):
    data = f"{method} {path} HTTP/1.1\r\nHost: miner\r\nContent-Length: 0\r\n\r\n".encode()
    counted = "refused_method" if status == 405 else "refused_bad_path"
    before = bodies.count(counted)
    reply = asyncio.run(send_raw(bodies.target, data, timeout_s=5.0))
    assert reply.status == status and shown in reply.body, (reply.status, reply.body)
    wait_for(lambda: bodies.count(counted) == before + 1)
    message = json.loads(reply.body)["message"]
    assert len(message) < 120 and message.isascii() and message.isprintable(), message
    assert reply.status != CLOSED
