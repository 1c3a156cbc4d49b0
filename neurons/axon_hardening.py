"""Malformed requests get a 4xx from the stock axon instead of a 500.

bittensor 10.5's axon answers about fifteen kinds of malformed request with 500 "Internal Server
Error" (docs/security.md): headers that do not parse (its `SynapseParsingError` is not one of its
own `SynapseException`s, so it falls through to the catch-all), bodies that are not JSON, not an
object or not the synapse's fields, and a body hash that does not match (all raised as plain
exceptions from the body check). Three small replacements, made before the axon serves:

- its middleware's header parsing raises a `SynapseException` carrying status 400;
- its body check answers 400 with a short reason (never echoing the request back);
- FastAPI's own 422 for an unparseable body becomes the same 400.
"""

from __future__ import annotations

import json
from typing import Any

from bittensor.core.axon import AxonMiddleware
from bittensor.core.errors import SynapseException
from bittensor.core.synapse import Synapse, TerminalInfo
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.middleware import Middleware


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


def strict_body_check(axon: Any) -> Any:
    """The axon's body check, answering 400 (not 500) for a body that is not this synapse."""

    async def verify_body_integrity(request: Request) -> dict[str, Any]:
        body = await request.body()
        route = request.url.path.split("/")[1]
        try:
            body_dict = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPException(400, "request body is not JSON") from exc
        if not isinstance(body_dict, dict):
            raise HTTPException(400, "request body is not a JSON object")
        try:
            parsed = axon.forward_class_types[route](**body_dict)
        except (ValidationError, TypeError, ValueError) as exc:
            raise HTTPException(400, f"request body is not a valid {route}") from exc
        if parsed.body_hash != request.headers.get("computed_body_hash", ""):
            raise HTTPException(400, "request body does not match its computed_body_hash")
        return body_dict

    return verify_body_integrity


async def _validation_error_as_400(request: Any, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=400, content={"message": "request body is not a valid synapse"})


async def _http_exception_as_message(request: Any, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse(status_code=exc.status_code, content={"message": exc.detail})


def harden(axon: Any) -> None:
    """Apply the three replacements; call before `attach` (it captures the body check) and before serving.

    The `/Synapse` ping route is removed: attach it again (with a blacklist) if it should be served.
    """
    app = axon.app
    app.user_middleware = [
        Middleware(HardenedAxonMiddleware, **m.kwargs) if m.cls is AxonMiddleware else m for m in app.user_middleware
    ]
    axon.verify_body_integrity = strict_body_check(axon)
    # The default `/Synapse` ping route was attached with the stock body check: the caller re-attaches it.
    for router in (axon.router, app.router):
        router.routes = [route for route in router.routes if getattr(route, "path", None) != "/Synapse"]
    app.add_exception_handler(RequestValidationError, _validation_error_as_400)
    app.add_exception_handler(HTTPException, _http_exception_as_message)
