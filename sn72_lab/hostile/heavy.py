"""Attacks on the HTTP layer and floods: many connections, slow or huge transfers, request storms.

Each function takes the attack context and returns an `Observation`; they use raw sockets (asyncio streams)
because a slow or idle client is exactly what an HTTP library will not let you be.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections.abc import Callable

from sn72_lab.hostile.model import Context, Observation, Reply
from sn72_lab.hostile.wire import (
    CLOSED,
    NO_ANSWER,
    HostileRequest,
    Response,
    build,
    connect,
    read_response,
    send,
    send_slowly,
)
from sn72_tools.client import axon_info, encode_jpeg, make_dendrite, query, synthetic_image

MB = 1024 * 1024


async def storm(context: Context, make: Callable[[int], HostileRequest], count: int, rate_per_s: float | None,
                concurrency: int = 16) -> Observation:
    """`count` requests at `rate_per_s` on average (None: as fast as `concurrency` allows), each on a new connection.

    Arrivals are a Poisson process, as many independent senders make: a metronome at 5/s against a validator at
    exactly 1/s phase-locks with the token bucket's refill, and who wins then depends on the start phase alone.
    """
    gate = asyncio.Semaphore(concurrency)
    started_s = time.monotonic()
    arrivals = random.Random()
    offsets_s = list(itertools.accumulate(arrivals.expovariate(rate_per_s) for _ in range(count))) if rate_per_s else []

    async def one(i: int) -> Response:
        if offsets_s:
            await asyncio.sleep(max(0.0, started_s + offsets_s[i] - time.monotonic()))
        async with gate:
            return await send(make(i), context.target, timeout_s=15.0)

    responses = await asyncio.gather(*(one(i) for i in range(count)))
    return Observation([Reply.of(r) for r in responses])


async def spoofed_flood(context: Context) -> Observation:
    """Unsigned requests claiming the honest validator's hotkey, at flood_rate_per_s for flood_s."""
    count = int(context.flood_s * context.flood_rate_per_s)
    return await storm(context, lambda i: HostileRequest(claim_hotkey=context.validator_hotkey, image="AAAA",
                                                         source_ip=context.attacker_ip),
                       count, context.flood_rate_per_s)


async def refusal_flood(context: Context, count: int = 500) -> Observation:
    """Half unsigned (claiming the validator), half signed by a stranger: refusals of two kinds, fast."""

    def make(i: int) -> HostileRequest:
        if i % 2:  # a fresh dendrite uuid each: concurrent requests may arrive out of nonce order
            return HostileRequest(signer=context.stranger, image="AAAA", source_ip=context.attacker_ip,
                                  uuid=str(uuid.uuid4()))
        return HostileRequest(claim_hotkey=context.validator_hotkey, image="AAAA", source_ip=context.attacker_ip)

    return await storm(context, make, count, None)


async def signed_flood(context: Context, extra: int = 20) -> Observation:
    """burst + extra signed requests at once from one registered validator's hotkey, through real dendrites.

    One dendrite per request (each has its own uuid, as after a restart): requests sent at once from one dendrite
    may arrive out of nonce order, and bittensor refuses a nonce lower than the last one seen for that uuid.
    """
    dendrites = [make_dendrite(context.attacker) for _ in range(int(context.burst) + extra)]
    axon = axon_info(context.target.host, context.target.port, context.target.miner_hotkey)
    image = encode_jpeg(synthetic_image(7))
    try:
        outcomes = await asyncio.gather(*(query(dendrite, axon, image) for dendrite in dendrites))
    finally:
        for dendrite in dendrites:
            await dendrite.aclose_session()
    return Observation([Reply(o.status_code, o.message, o.prediction, None, o.latency_s) for o in outcomes])


async def wait_closed(reader: asyncio.StreamReader, limit_s: float) -> bool:
    """True when the server hangs up within limit_s (anything it sends first is read and dropped)."""
    until = time.monotonic() + limit_s
    try:
        while time.monotonic() < until:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.01, until - time.monotonic()))
            if not chunk:
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return False


async def idle_connections(context: Context) -> Observation:
    """Open `idle_connections` connections from one address, send nothing, and time when each is closed."""
    count = context.idle_connections
    gate = asyncio.Semaphore(128)
    writers: list[asyncio.StreamWriter] = []

    async def hold() -> Reply:
        opened_s = time.monotonic()
        try:
            async with gate:
                reader, writer = await connect(context.target, context.attacker_ip)
        except OSError:
            return Reply(CLOSED, "refused at connect", elapsed_s=time.monotonic() - opened_s)
        writers.append(writer)
        closed = await wait_closed(reader, context.slow_give_up_s)
        return Reply(CLOSED if closed else NO_ANSWER, elapsed_s=time.monotonic() - opened_s)

    try:
        replies = await asyncio.gather(*(hold() for _ in range(count)))
    finally:
        for writer in writers:
            writer.close()
    return Observation(list(replies))


def idle_check(context: Context, replies: list[Reply]) -> list[str]:
    problems = []
    if context.max_connections_per_ip is not None:
        prompt = sum(1 for r in replies if r.status == CLOSED and r.elapsed_s < 1.5)
        wanted = len(replies) - context.max_connections_per_ip - 16
        if prompt < wanted:
            problems.append(f"{prompt} of {len(replies)} idle connections closed within 1.5 s (wanted >= {wanted})")
    return problems


async def slow_headers(context: Context, clients: int = 8) -> Observation:
    """Clients that send a valid request's headers one byte a second (and never finish)."""
    head, _ = build(HostileRequest(claim_hotkey=context.validator_hotkey), context.target)

    async def one() -> Reply:
        response, _ = await send_slowly(context.target, head, 1.0, context.slow_give_up_s, context.attacker_ip)
        return Reply.of(response)

    return Observation(list(await asyncio.gather(*(one() for _ in range(clients)))))


async def slow_body(context: Context, clients: int = 2) -> Observation:
    """A signed request (a registered validator's key) whose headers arrive at once and whose body trickles."""

    async def one() -> Reply:
        head, body = build(HostileRequest(signer=context.attacker, image="A" * 4000), context.target)
        response, _ = await send_slowly(context.target, body, 1.0, context.slow_give_up_s, context.attacker_ip,
                                        already_sent=head)
        return Reply.of(response)

    return Observation(list(await asyncio.gather(*(one() for _ in range(clients)))))


async def declared_huge_body(context: Context, size: int = 100 * MB) -> Observation:
    """Signed headers declaring a 100 MB body; nothing more is sent: the refusal must not wait for the body."""
    head, _ = build(HostileRequest(signer=context.attacker, content_length=size), context.target)
    started_s = time.monotonic()
    reader, writer = await connect(context.target, context.attacker_ip)
    try:
        writer.write(head)
        await writer.drain()
        return Observation([Reply.of(await read_response(reader, started_s, 5.0))])
    finally:
        writer.close()


async def huge_body(context: Context, size: int = 100 * MB, chunked: bool = False) -> Observation:
    """A signed request with a 100 MB body actually sent (plain, or chunked so no length is declared)."""
    body = json.dumps({"image": "A" * size}).encode()
    request = HostileRequest(signer=context.attacker, body=body, chunked=MB if chunked else None)
    head, payload = build(request, context.target)
    started_s = time.monotonic()
    reader, writer = await connect(context.target, context.attacker_ip)
    reading = asyncio.ensure_future(read_response(reader, started_s, 30.0))
    try:
        writer.write(head)
        for i in range(0, len(payload), MB):
            if reading.done():
                break
            writer.write(payload[i:i + MB])
            # A server that neither reads nor answers must not hang the sender: wait for whichever comes first.
            draining = asyncio.ensure_future(writer.drain())
            await asyncio.wait([draining, reading], return_when=asyncio.FIRST_COMPLETED)
            if not draining.done():
                draining.cancel()
            elif draining.exception() is not None:
                break  # the server hung up
    except ConnectionError:
        pass
    finally:
        response = await reading
        writer.close()
    return Observation([Reply.of(response)])


async def oversized_headers(context: Context, lines: list[bytes]) -> Observation:
    """A request with a huge header block; the miner must refuse it (4xx) and close the connection."""
    head, body = build(HostileRequest(signer=context.attacker, raw_header_lines=lines), context.target)
    started_s = time.monotonic()
    reader, writer = await connect(context.target, context.attacker_ip)
    try:
        try:
            writer.write(head + body)
            await writer.drain()
        except ConnectionError:
            pass
        response = await read_response(reader, started_s, 10.0)
        problems = []
        if response.status not in (CLOSED, NO_ANSWER) and not await wait_closed(reader, 3.0):
            problems.append("the connection was left open after the refusal")
        return Observation([Reply.of(response)], problems)
    finally:
        writer.close()


def within(limit: Callable[[Context], float]) -> Callable[[Context, list[Reply]], list[str]]:
    """A check: every reply came within limit(context) seconds."""

    def check(context: Context, replies: list[Reply]) -> list[str]:
        slowest = max((r.elapsed_s for r in replies), default=0.0)
        bound = limit(context)
        return [f"slowest reply after {slowest:.1f} s (limit {bound:.1f} s)"] if slowest > bound else []

    return check


async def idle_from_many_addresses(context: Context) -> Observation:
    """Idle connections from many addresses (127.0.0.10 onwards), each under the per-address cap: 180 x 60 = 10,800
    at full size (as in the outside attack of 4 December), 20 x 30 small. The total cap and the header deadline must
    close them while the validator is still answered."""
    addresses, per_address = (180, 60) if context.full else (20, 30)
    gate = asyncio.Semaphore(256)
    writers: list[asyncio.StreamWriter] = []

    async def hold(address: str) -> Reply:
        opened_s = time.monotonic()
        try:
            async with gate:
                reader, writer = await connect(context.target, address)
        except OSError:
            return Reply(CLOSED, "refused at connect", elapsed_s=time.monotonic() - opened_s)
        writers.append(writer)
        closed = await wait_closed(reader, context.slow_give_up_s)
        return Reply(CLOSED if closed else NO_ANSWER, elapsed_s=time.monotonic() - opened_s)

    sources = [f"127.0.{10 + i // 250}.{1 + i % 250}" for i in range(addresses)]
    try:
        replies = await asyncio.gather(*(hold(address) for address in sources for _ in range(per_address)))
    finally:
        for writer in writers:
            writer.close()
    return Observation(list(replies))
