"""Nonce games (second red-team pass, defects 2 and 3): the unsigned version header that switched bittensor's age
window off, captured requests replayed with it, and a validator's own requests arriving out of nonce order.

`bt_header_dendrite_version` is not signed: bittensor 10.5's `default_verify` checks a nonce's age only when it
claims >= 7.2.0 (7002000), so any request could claim 7.1.0 and skip the window.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from sn72_lab.hostile import payloads
from sn72_lab.hostile.model import Context, Observation, Reply
from sn72_lab.hostile.wire import HostileRequest, build, send, send_raw

OLD_VERSION = "7001000"  # bittensor 7.1.0: before the age window
SECOND_NS = 1_000_000_000


def signed_long_ago(age_s: float, version: str | None = OLD_VERSION) -> Callable[[Context], Awaitable[Observation]]:
    """A request signed `age_s` ago (a fresh dendrite uuid, so only the age can refuse it), claiming an old
    bittensor (`version`; None: no version header at all)."""

    async def run(context: Context) -> Observation:
        request = HostileRequest(signer=context.attacker, image=payloads.b64(payloads.jpeg(4)),
                                 nonce_ns=time.time_ns() - int(age_s * SECOND_NS), uuid=str(uuid.uuid4()),
                                 headers={"bt_header_dendrite_version": version})
        return Observation([Reply.of(await send(request, context.target))])

    return run


async def captured_replays(context: Context, copies: int = 30) -> Observation:
    """A signed request answered once, then its captured bytes sent again 30 times with the version header lowered
    (the second red-team pass: 30 such replays spent the signer's rate bucket). The original's reply is not judged;
    the check (`original_answered`) wants it 200."""
    head, body = build(HostileRequest(signer=context.attacker, image=payloads.b64(payloads.jpeg(6))), context.target)
    original = await send_raw(context.target, head + body)
    lowered = _with_header(head, "bt_header_dendrite_version", OLD_VERSION)
    replies = [Reply.of(await send_raw(context.target, lowered + body)) for _ in range(copies)]
    problems = [] if original.status == 200 else [f"the original request got {original.status}, not 200"]
    return Observation(replies, problems)


def _with_header(head: bytes, name: str, value: str) -> bytes:
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    prefix = name.encode().lower() + b":"
    kept = [line for line in lines if not line.lower().startswith(prefix)]
    return b"\r\n".join([*kept, f"{name}: {value}".encode()]) + b"\r\n\r\n"


async def reordered_nonces(context: Context, count: int = 8) -> Observation:
    """One dendrite (one uuid) signs `count` requests in order and they arrive in reverse order, 30 ms apart, as
    queueing reorders a validator's concurrent requests (defect 3: refused 401 "Nonce is too old").
    Every one must be answered: none is a replay."""
    dendrite_uuid = str(uuid.uuid4())
    first_ns = time.time_ns()
    image = payloads.b64(payloads.jpeg(9))
    requests = [HostileRequest(signer=context.attacker, image=image, uuid=dendrite_uuid, nonce_ns=first_ns + i * 1000)
                for i in range(count)]

    async def one(position: int, request: HostileRequest) -> Reply:
        await asyncio.sleep(0.03 * position)
        return Reply.of(await send(request, context.target, timeout_s=15.0))

    replies = await asyncio.gather(*(one(p, r) for p, r in enumerate(reversed(requests))))
    return Observation(list(replies))


def none_refused_as_old(_: Context, replies: list[Reply]) -> list[str]:
    refused = [r.message for r in replies if r.status == 401]
    return [f"{len(refused)} of {len(replies)} refused 401 ({refused[0]!r})"] if refused else []
