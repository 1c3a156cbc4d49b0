"""Malformed requests get a 4xx from the stock axon instead of a 500; the nonce rule no header can weaken.

bittensor 10.5's axon answers about fifteen kinds of malformed request with 500 "Internal Server
Error" (docs/security.md): headers that do not parse (its `SynapseParsingError` is not one of its
own `SynapseException`s, so it falls through to the catch-all), bodies that are not JSON, not an
object or not the synapse's fields, and a body hash that does not match (all raised as plain
exceptions from the body check). Three small replacements, made before the axon serves:

- its middleware's header parsing raises a `SynapseException` carrying status 400;
- its body check answers 400 with a short reason (never echoing the request back), also for a body whose fields
  hold NaN or an infinity (the axon's JSON encoder refused them when it answered: 500);
- FastAPI's own 422 for an unparseable body becomes the same 400.

Its `default_verify` is replaced too (defects 2 and 3 of the second red-team pass, docs/security.md): the same
signature check over the same signed string, with the nonce rule of neurons/nonces.py instead of one that an
unsigned version header switches off.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from bittensor.core.axon import AxonMiddleware
from bittensor.core.errors import SynapseDendriteNoneException, SynapseException
from bittensor.core.synapse import Synapse, TerminalInfo
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.middleware import Middleware

from neurons.nonces import NonceRecord


class MalformedRequest(SynapseException):
    """A request the axon cannot parse: answered 400."""


def _refusal(message: str) -> Synapse:
    synapse = Synapse()
    synapse.axon = TerminalInfo(status_code=400, status_message=message)
    return synapse


class HardenedAxonMiddleware(AxonMiddleware):
    async def preprocess(self, request: Any) -> Synapse:
        try:
            return await super().preprocess(request)
        except SynapseException:
            raise  # unknown route (404) and the like: the axon's own answer is right
        except Exception as exc:
            message = "malformed request headers"
            raise MalformedRequest(message, synapse=_refusal(message)) from exc


def checked_body(axon: Any, route: str, body: bytes, header_hash: str) -> tuple[dict[str, Any], Synapse]:
    """The request body as a dict and as `route`'s synapse, or HTTPException(400) with a short reason (never the body
    echoed): not JSON, not an object, not the synapse's fields, a field that is NaN or an infinity, or not the body
    its signed `computed_body_hash` header names."""
    try:
        body_dict = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, "request body is not JSON") from exc
    if not isinstance(body_dict, dict):
        raise HTTPException(400, "request body is not a JSON object")
    try:
        parsed: Synapse = axon.forward_class_types[route](**body_dict)
    except (ValidationError, TypeError, ValueError) as exc:
        raise HTTPException(400, f"request body is not a valid {route}") from exc
    odd = non_finite_field(parsed.model_dump(exclude={"prediction"}))
    if odd is not None:
        raise HTTPException(400, f"request body field {odd} is not a finite number")
    if parsed.body_hash != header_hash:
        raise HTTPException(400, "request body does not match its computed_body_hash")
    return body_dict, parsed


def strict_body_check(axon: Any) -> Any:
    """The axon's body check (its FastAPI route's dependency), answering 400 (not 500) for a body that is not this
    synapse (`checked_body`)."""

    async def verify_body_integrity(request: Request) -> dict[str, Any]:
        body = await request.body()
        route = request.url.path.split("/")[1]
        body_dict, _ = checked_body(axon, route, body, request.headers.get("computed_body_hash", ""))
        return body_dict  # FastAPI builds the handler's synapse from the body again

    return verify_body_integrity


def non_finite_field(value: Any, path: str = "") -> str | None:
    """The first field holding NaN or an infinity (dotted path), or None.

    The body's own copy of the synapse is what the axon answers with, and its JSON encoder refuses such numbers
    (a 500 after the answer was computed): `timeout: "nan"` or a 400-digit number did that. `prediction` is left
    out by the caller: the miner always overwrites it (a NaN there with a good image is answered, as before).
    """
    if isinstance(value, float):
        return None if math.isfinite(value) else path or "(body)"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite_field(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


# What h11 sends as a header value: visible latin-1 characters, spaces and tabs only between them (or nothing).
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e\x80-\xff](?:[\x20\x09\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")


def header_safe(synapse: Synapse) -> Synapse:
    """The answer with every text its headers echo made sendable: the caller's body sets the answer's `name` and its
    `axon` and `dendrite` fields, and bittensor sends each back as a header (`Synapse.to_headers`). A value no header
    can carry ("€", an emoji, a CR LF) made the answer fail after it was computed: a 500, or with a CR LF the
    connection closed unanswered. Such a `name` becomes the synapse's class name; such a terminal field is dropped
    (None: not sent back, and the caller's dendrite keeps its own value)."""
    if synapse.name is not None and not _HEADER_VALUE.fullmatch(synapse.name):
        synapse.name = type(synapse).__name__
    for terminal in (synapse.axon, synapse.dendrite):
        if terminal is None:
            continue
        for key, value in terminal.__dict__.items():
            if isinstance(value, str) and not _HEADER_VALUE.fullmatch(value):
                setattr(terminal, key, None)
    return synapse


class NotVerified(Exception):
    """Signature or nonce refused: the axon's verify step answers 401 with this message."""


# Claims a verified nonce (the record's state, and the caller's rate limit): (why it is refused or None, whether the
# caller is over its rate limit). In the miner process a call into the record; in a front process a round trip to
# the miner process, which holds the one record for every front (neurons/serving_core.py).
Admit = Callable[[str, str | None, int, str], Awaitable[tuple[str | None, bool]]]


def record_admit(record: NonceRecord) -> Admit:
    """Claims in `record` itself, with no rate limit (the stock axon's routes)."""

    async def admit(signer: str, uuid: str | None, nonce: int, hotkey: str) -> tuple[str | None, bool]:
        return record.claim(signer, uuid, nonce), False

    return admit


def strict_verifier(axon_hotkey: str, window: NonceRecord, admit: Admit) -> Callable[[Synapse], Awaitable[bool]]:
    """bittensor's `default_verify`, exactly as strict on the signature, with the nonce rule of neurons/nonces.py:
    `window`'s checks that need no record first (cheap, before the signature), then `admit` claims the nonce once
    the signature holds. The verifier returns whether the caller is over its rate limit; it raises to refuse (401).

    The signed string is bittensor's: `nonce.dendrite_hotkey.axon_hotkey.uuid.body_hash`. What bittensor decides
    from the unsigned `bt_header_dendrite_version` header (whether the age window applies) is not read at all.
    """
    from bittensor_wallet import Keypair

    async def verify(synapse: Synapse) -> bool:
        dendrite = synapse.dendrite
        if dendrite is None:
            raise SynapseDendriteNoneException(synapse=synapse)
        keypair = Keypair(ss58_address=dendrite.hotkey)  # a missing or malformed hotkey raises: 401
        # The record is keyed by the public key, not its spelling: one key written with other ss58 prefixes is
        # still one signer (for the memory bound and its floor).
        public_key, nonce = keypair.public_key, dendrite.nonce
        if public_key is None or nonce is None:
            raise NotVerified("missing hotkey or nonce")
        refusal = window.window_refusal(nonce)
        if refusal is not None:
            raise NotVerified(refusal)
        if not dendrite.signature:
            raise NotVerified("missing signature")
        message = f"{nonce}.{dendrite.hotkey}.{axon_hotkey}.{dendrite.uuid}.{synapse.computed_body_hash}"
        if not keypair.verify(message, dendrite.signature):
            raise NotVerified("signature mismatch")
        # Only a verified request changes state: the claim checks and records the nonce in one step (no await
        # inside it), so two copies of one request cannot both pass.
        refusal, rate_limited = await admit(public_key.hex(), dendrite.uuid, nonce, str(dendrite.hotkey))
        if refusal is not None:
            raise NotVerified(refusal)
        return rate_limited

    return verify


def strict_verify(axon: Any, record: NonceRecord) -> Any:
    """The axon's `default_verify`: `strict_verifier` claiming in `record`."""
    # Read once: the key file is not re-read per request (docs/performance.md), and the miner's hotkey is fixed.
    verifier = strict_verifier(axon.wallet.hotkey.ss58_address, record, record_admit(record))

    async def verify(synapse: Synapse) -> None:
        await verifier(synapse)

    return verify


async def _validation_error_as_400(request: Any, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=400, content={"message": "request body is not a valid synapse"})


async def _http_exception_as_message(request: Any, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse(status_code=exc.status_code, content={"message": exc.detail})


def harden(axon: Any, nonces: NonceRecord | None = None) -> None:
    """Apply the replacements; call before `attach` (it captures the body check and, for routes attached without
    a verify function, `default_verify`) and before serving. `nonces`: the nonce rule's settings (defaults if None).

    The `/Synapse` ping route is removed: attach it again (with a blacklist) if it should be served.
    """
    app = axon.app
    app.user_middleware = [
        Middleware(HardenedAxonMiddleware, **m.kwargs) if m.cls is AxonMiddleware else m for m in app.user_middleware
    ]
    axon.verify_body_integrity = strict_body_check(axon)
    # bittensor's own record (`axon.nonces`, one entry per hotkey and uuid, never pruned) is no longer written;
    # ours stays reachable for its size.
    axon.nonce_record = nonces if nonces is not None else NonceRecord()
    axon.default_verify = strict_verify(axon, axon.nonce_record)
    # The default `/Synapse` ping route was attached with the stock body check: the caller re-attaches it.
    for router in (axon.router, app.router):
        router.routes = [route for route in router.routes if getattr(route, "path", None) != "/Synapse"]
    app.add_exception_handler(RequestValidationError, _validation_error_as_400)
    app.add_exception_handler(HTTPException, _http_exception_as_message)
