"""The validators' wire, spoken by hand so that any part of it can be forged.

A request is built the way a bittensor 9.x/10.x dendrite builds it: `Dendrite.preprocess_synapse_for_request`
fills the terminal headers and signs `nonce.dendrite_hotkey.axon_hotkey.uuid.body_hash`, `Synapse.to_headers`
writes the `name`, `timeout`, `bt_header_*` and `computed_body_hash` headers, and the body is the synapse's
`model_dump()` as JSON. Each field of `HostileRequest` then tampers with one part: no signature, someone else's
signature, an old or replayed nonce, a raw `timeout` value, another route, raw headers, any body, chunked or
slow transfer. Responses are read from a raw socket, so a server that hangs up is seen as "closed".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid as uuid_module
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from neurons.protocol import ExtendedImageSynapse, ImageSynapse

CLOSED = "closed"  # the server hung up (or reset) before a complete response
NO_ANSWER = "no answer"  # the client gave up waiting: the server neither answered nor hung up

SYNAPSES: dict[str, type[ImageSynapse]] = {"ImageSynapse": ImageSynapse, "ExtendedImageSynapse": ExtendedImageSynapse}


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    miner_hotkey: str


@dataclass
class HostileRequest:
    """One request; every field other than the defaults is a tamper."""

    signer: Any = None  # a bittensor Keypair that signs; None: unsigned (claim_hotkey is still sent)
    claim_hotkey: str | None = None  # the caller hotkey in the headers (default: the signer's)
    route: str = "ImageSynapse"
    method: str = "POST"
    image: str = ""
    fields: dict[str, Any] = field(default_factory=dict)  # body fields set after model_dump (NaN allowed)
    body: bytes | None = None  # replaces the JSON body entirely
    timeout_s: float = 9.0  # what a validator sends (signed nowhere)
    timeout_header: str | None = None  # the raw `timeout` header instead of str(timeout_s)
    nonce_ns: int | None = None  # default: now
    uuid: str | None = None  # the dendrite uuid (default: one per signer)
    axon_hotkey: str | None = None  # the hotkey the request is signed for (default: the target miner's)
    signature: str | None = None  # the raw signature header instead of the real one
    body_hash: str | None = None  # sign over this body hash instead of the real one
    headers: dict[str, str | None] = field(default_factory=dict)  # raw overrides; None removes the header
    raw_header_lines: Sequence[bytes] = ()  # appended as is (oversize or junk lines)
    content_length: int | None = None  # declared length instead of the real one
    chunked: int | None = None  # Transfer-Encoding: chunked with chunks of this many bytes
    source_ip: str | None = None  # bind the client socket to this address (127.0.0.x on loopback)


@dataclass
class Response:
    status: int | str  # an HTTP status, CLOSED or NO_ANSWER
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message(self) -> str:
        """The axon's status message (a header on answers, the JSON body's `message` on refusals)."""
        header = self.headers.get("bt_header_axon_status_message")
        if header:
            return header
        try:
            data = self.json()
        except ValueError:
            return self.body.decode(errors="replace")
        return str(data.get("message", "")) if isinstance(data, dict) else str(data)


_DENDRITES: dict[str, Any] = {}


def dendrite_for(keypair: Any) -> Any:
    """One bittensor dendrite per keypair (its uuid stays fixed, as a validator's does)."""
    from sn72_tools.client import make_dendrite

    dendrite = _DENDRITES.get(keypair.ss58_address)
    if dendrite is None:
        dendrite = _DENDRITES[keypair.ss58_address] = make_dendrite(keypair)
    return dendrite


def signing_message(synapse: Any, body_hash: str | None = None) -> str:
    """The string a dendrite signs (bittensor's `preprocess_synapse_for_request`; the axon's `default_verify`)."""
    d, a = synapse.dendrite, synapse.axon
    return f"{d.nonce}.{d.hotkey}.{a.hotkey}.{d.uuid}.{synapse.body_hash if body_hash is None else body_hash}"


def build_synapse(request: HostileRequest, target: Target) -> Any:
    """The synapse as a dendrite would send it, then the tampers that touch signed parts (re-signed if signed)."""
    import bittensor as bt
    from bittensor.core.settings import version_as_int

    cls = SYNAPSES.get(request.route, ImageSynapse)
    synapse = cls(image=request.image)
    axon = bt.AxonInfo(version=0, ip=target.host, port=target.port, ip_type=4, hotkey=target.miner_hotkey, coldkey="")
    if request.signer is not None:
        synapse = dendrite_for(request.signer).preprocess_synapse_for_request(axon, synapse, request.timeout_s)
    else:
        synapse.timeout = request.timeout_s
        synapse.dendrite = bt.TerminalInfo(ip="127.0.0.1", version=version_as_int, nonce=time.time_ns(),
                                           uuid=str(uuid_module.uuid1()), hotkey=request.claim_hotkey)
        synapse.axon = bt.TerminalInfo(ip=target.host, port=target.port, hotkey=target.miner_hotkey)
    dendrite, terminal = synapse.dendrite, synapse.axon
    assert dendrite is not None and terminal is not None
    if request.nonce_ns is not None:
        dendrite.nonce = request.nonce_ns
    if request.uuid is not None:
        dendrite.uuid = request.uuid
    if request.axon_hotkey is not None:
        terminal.hotkey = request.axon_hotkey
    tampered = (request.nonce_ns, request.uuid, request.axon_hotkey, request.body_hash)
    if request.signer is not None and any(value is not None for value in tampered):
        dendrite.signature = f"0x{request.signer.sign(signing_message(synapse, request.body_hash)).hex()}"
    if request.signer is not None and request.claim_hotkey is not None:
        dendrite.hotkey = request.claim_hotkey  # signed by one key, claiming another
    return synapse


def build(request: HostileRequest, target: Target) -> tuple[bytes, bytes]:
    """(head, body): the request line and headers, and the body exactly as they go on the wire."""
    synapse = build_synapse(request, target)
    headers: dict[str, str] = synapse.to_headers()
    if request.timeout_header is not None:
        headers["timeout"] = request.timeout_header
    if request.signature is not None:
        headers["bt_header_dendrite_signature"] = request.signature
    # A dendrite posts `json=synapse.model_dump()`; json.dumps writes NaN/Infinity as bare tokens.
    body = request.body if request.body is not None else json.dumps({**synapse.model_dump(), **request.fields}).encode()
    for name, value in request.headers.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    lines = [f"{request.method} /{request.route} HTTP/1.1", f"Host: {target.host}:{target.port}",
             "Content-Type: application/json", "Accept: */*"]
    if request.chunked:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {len(body) if request.content_length is None else request.content_length}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1", errors="replace")
    head += b"".join(line + b"\r\n" for line in request.raw_header_lines) + b"\r\n"
    if request.chunked:
        size = request.chunked
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))
        body += b"0\r\n\r\n"
    return head, body


async def connect(target: Target, source_ip: str | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    local = (source_ip, 0) if source_ip else None
    return await asyncio.open_connection(target.host, target.port, local_addr=local, limit=1 << 20)


async def read_response(reader: asyncio.StreamReader, started_s: float, timeout_s: float) -> Response:
    """One HTTP/1.1 response; CLOSED if the server hangs up first, NO_ANSWER if it is silent for `timeout_s`."""

    async def read() -> Response:
        status_line = await reader.readline()
        if not status_line:
            return Response(CLOSED)
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return Response(CLOSED, status_line)
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read(1 << 20)
        return Response(int(parts[1]), body, headers)

    try:
        response = await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        response = Response(NO_ANSWER)
    except (ConnectionError, asyncio.IncompleteReadError):
        response = Response(CLOSED)
    response.elapsed_s = time.monotonic() - started_s
    return response


async def send(request: HostileRequest, target: Target, timeout_s: float = 15.0) -> Response:
    """Send one request on a fresh connection and read the answer (the server may answer before the body is sent)."""
    head, body = build(request, target)
    return await send_raw(target, head + body, timeout_s, request.source_ip)


async def send_raw(target: Target, data: bytes, timeout_s: float = 15.0, source_ip: str | None = None) -> Response:
    started_s = time.monotonic()
    try:
        reader, writer = await connect(target, source_ip)
    except OSError:
        return Response(CLOSED, elapsed_s=time.monotonic() - started_s)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):  # the answer (often a refusal) may still be readable
            await writer.drain()
        return await read_response(reader, started_s, timeout_s)
    finally:
        writer.close()


async def send_slowly(target: Target, data: bytes, interval_s: float, give_up_s: float,
                      source_ip: str | None = None, already_sent: bytes = b"") -> tuple[Response, int]:
    """`already_sent` at once, then `data` one byte every `interval_s`, until the server answers or hangs up.

    Returns the response (CLOSED when the server dropped the connection) and how many slow bytes went out.
    """
    started_s = time.monotonic()
    reader, writer = await connect(target, source_ip)
    reading = asyncio.ensure_future(read_response(reader, started_s, give_up_s))
    sent = 0
    try:
        if already_sent:
            writer.write(already_sent)
            await writer.drain()
        for byte in data:
            if reading.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            await asyncio.wait([reading], timeout=interval_s)
        return await reading, sent
    except ConnectionError:
        return await reading, sent
    finally:
        reading.cancel()
        writer.close()
