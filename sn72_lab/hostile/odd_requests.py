"""Requests an outside attacker tries from the protocol alone (defect 6 of the second red-team pass and
the attacks that held).

Odd request lines (paths that cannot name a synapse, other methods, an absurd nonce), HTTP framing tricks
(smuggling, pipelining), JSON bombs, base64 and field tricks, image files whose header lies about their size.
Every one must be answered 4xx (or 200 where the request is fine after all), never 500 and never a silent close.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sn72_lab.hostile import payloads
from sn72_lab.hostile.model import Context, Observation, Reply
from sn72_lab.hostile.wire import CLOSED, NO_ANSWER, HostileRequest, Response, build, connect, read_response, send_raw

Run = Callable[[Context], Awaitable[Observation]]


async def head_only(context: Context) -> Observation:
    """HEAD /ImageSynapse: the answer has headers and no body, so only the status line and headers are read."""
    head, _ = build(HostileRequest(claim_hotkey=context.validator_hotkey, method="HEAD", body=b""), context.target)
    started_s = time.monotonic()
    reader, writer = await connect(context.target)
    try:
        writer.write(head)
        await writer.drain()
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
        except TimeoutError:
            return Observation([Reply(NO_ANSWER, elapsed_s=time.monotonic() - started_s)])
        except ConnectionError:
            line = b""
        parts = line.decode("latin-1").split(" ", 2)
        status: int | str = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else CLOSED
        return Observation([Reply(status, elapsed_s=time.monotonic() - started_s)])
    finally:
        writer.close()


def raw(make: Callable[[Context], bytes], timeout_s: float = 10.0) -> Run:
    """Bytes written as they are on a fresh connection (framing the request builder would not write)."""

    async def run(context: Context) -> Observation:
        return Observation([Reply.of(await send_raw(context.target, make(context), timeout_s))])

    return run


def _signed_parts(context: Context) -> tuple[bytes, bytes]:
    request = HostileRequest(signer=context.attacker, image=payloads.b64(payloads.jpeg(11)), uuid=str(uuid.uuid4()))
    return build(request, context.target)


def _replace_length(head: bytes, *new_lines: bytes) -> bytes:
    """The head without its Content-Length line, with `new_lines` instead."""
    lines = [line for line in head.rstrip(b"\r\n").split(b"\r\n") if not line.lower().startswith(b"content-length:")]
    return b"\r\n".join([*lines, *new_lines]) + b"\r\n\r\n"


def smuggled_cl_te(context: Context) -> bytes:
    """Content-Length and Transfer-Encoding: chunked together, a second request hidden in the chunked body."""
    head, body = _signed_parts(context)
    hidden = b"GET /ImageSynapse HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) + hidden
    return _replace_length(head, b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked") + chunked


def duplicate_lengths(context: Context) -> bytes:
    head, body = _signed_parts(context)
    return _replace_length(head, b"Content-Length: %d" % len(body), b"Content-Length: 5") + body


async def pipelined(context: Context) -> Observation:
    """Two signed requests written at once on one connection; each must be answered (or the second closed)."""
    first, second = _signed_parts(context), _signed_parts(context)
    started_s = time.monotonic()
    reader, writer = await connect(context.target)
    try:
        writer.write(first[0] + first[1] + second[0] + second[1])
        await writer.drain()
        replies = [Reply.of(await read_response(reader, started_s, 10.0)) for _ in range(2)]
    finally:
        writer.close()
    return Observation(replies)


def first_answered(_: Context, replies: list[Reply]) -> list[str]:
    return [] if replies and replies[0].status == 200 else ["the first pipelined request was not answered 200"]


def deep_json(depth: int = 100_000) -> bytes:
    return b'{"image": ' + b"[" * depth + b"]" * depth + b"}"


def many_keys(count: int = 200_000) -> bytes:
    return b"{" + b",".join(b'"k%d": 0' % i for i in range(count)) + b', "image": "AAAA"}'


def data_uri() -> str:
    return "data:image/jpeg;base64," + payloads.b64(payloads.jpeg(12))


def wrapped_base64() -> str:
    """Base64 wrapped at 76 columns (MIME style): newlines inside the string."""
    text = payloads.b64(payloads.jpeg(13))
    return "\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def urlsafe_base64() -> str:
    return payloads.b64(payloads.jpeg(14)).replace("+", "-").replace("/", "_").rstrip("=")


def jpeg_frame_bomb() -> bytes:
    """A tiny JPEG whose frame header declares 65000 x 65000 (4.2 G pixels)."""
    from sn72_lab.hostile_jpeg import many_scans_jpeg

    return many_scans_jpeg(65000, 65000, 1, dc_scan=False)


def webp_canvas_bomb() -> bytes:
    """An extended WebP (VP8X) declaring a 16384 x 16384 canvas and holding no image."""
    width = height = 16384
    vp8x = struct.pack("<I", 0) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def long_animation(frames: int) -> Callable[[], bytes]:
    def make() -> bytes:
        images = [payloads.photo(i, (16, 16)) for i in range(frames)]
        return payloads.encode(images[0], "PNG", save_all=True, append_images=images[1:], duration=10, loop=0)

    return make


async def header_storm(context: Context) -> Observation:
    """200 requests (400 full size), 16 at a time, each with 200 header lines of ~60 bytes (under the header
    block cap, so each one is parsed), unsigned and claiming the validator's hotkey."""
    count = 400 if context.full else 200
    lines = [b"x-storm-%03d: %s" % (i, b"v" * 48) for i in range(200)]
    gate = asyncio.Semaphore(16)

    async def one() -> Response:
        async with gate:
            request = HostileRequest(claim_hotkey=context.validator_hotkey, image="AAAA", raw_header_lines=lines,
                                     source_ip=context.attacker_ip)
            head, body = build(request, context.target)
            return await send_raw(context.target, head + body, 15.0, context.attacker_ip)

    return Observation([Reply.of(r) for r in await asyncio.gather(*(one() for _ in range(count)))])


async def keyed_flood(context: Context, signer: Callable[[int], Any], count: int) -> Observation:
    """`count` signed requests as fast as 16 connections allow, signer(i) signing the i-th."""
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> Response:
        async with gate:
            request = HostileRequest(signer=signer(i), image="AAAA", uuid=str(uuid.uuid4()),
                                     source_ip=context.attacker_ip)
            head, body = build(request, context.target)
            return await send_raw(context.target, head + body, 15.0, context.attacker_ip)

    return Observation([Reply.of(r) for r in await asyncio.gather(*(one(i) for i in range(count)))])


async def non_permit_flood(context: Context) -> Observation:
    if context.non_validator is None:
        return Observation([Reply("skipped", "no non-validator identity given")])
    return await keyed_flood(context, lambda _: context.non_validator, 1000 if context.full else 300)


async def random_hotkey_flood(context: Context) -> Observation:
    from bittensor_wallet import Keypair

    count = 1000 if context.full else 300
    keys = [Keypair.create_from_uri(f"//sn72-random/{time.time_ns()}/{i}") for i in range(count)]
    return await keyed_flood(context, lambda i: keys[i], count)
