"""The axon's request path as one plain ASGI function: bittensor's own steps, without the framework between them.

bittensor 10.5 serves a synapse through FastAPI: its `AxonMiddleware` (a Starlette `BaseHTTPMiddleware`, which runs
the rest of the app in a task group of its own and streams the response back through memory channels), then FastAPI's
routing, which solves the route's dependency (the body check, which parses the JSON and builds the synapse), parses
the same JSON again and validates it into the synapse a second time for the handler's argument. Profiled on an H200
under load (docs/performance.md), that machinery was about 40% of a front process's interpreter time.

`SynapseDispatch` makes the same calls in the same order and answers what a dendrite sends with the same bytes:
the middleware's own `preprocess`, `blacklist`, `verify` and `priority` (the hardened ones, neurons/axon_hardening.py),
the body check that answers 400 for a body that is not the synapse, the attached forward function, and the axon's
own `synapse_to_response`, `log_and_handle_error` and `create_error_response` for the answer and every error. What it
leaves out is the framework: one JSON parse and one validation of the body instead of two, no task group, no
dependency solving. The HTTP guard (neurons/http_guard.py) in front of it has already refused what the framework
would have answered for an unknown route, a method other than POST or GET and a protocol upgrade.

`axon.dispatch: fastapi` serves through bittensor's own app instead (docs/configuration.md);
tests/integration/test_axon_dispatch.py holds both paths to the same status, body and headers, request for request,
and holds the few deliberate differences docs/security.md lists (a body sent as another content type: answered here,
a 500 from bittensor's app; the wording of a parse error).
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from bittensor.core.axon import create_error_response, log_and_handle_error
from bittensor.core.errors import InvalidRequestNameError, SynapseException
from bittensor.core.synapse import Synapse, TerminalInfo
from fastapi import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from neurons.axon_hardening import HardenedAxonMiddleware, checked_body


class SynapseDispatch:
    """ASGI app serving `axon`'s attached synapses (its handlers and hardening in place, as for its own app)."""

    def __init__(self, axon: Any) -> None:
        self.axon = axon
        self._steps = HardenedAxonMiddleware(_no_app, axon=axon)  # its methods only: never called as an app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # the HTTP guard hands this app nothing else
        response = await self.respond(Request(scope, receive))
        await response(scope, receive, send)

    async def respond(self, request: Request) -> Response:
        """`AxonMiddleware.dispatch`'s steps and error answers, with the route's handler called in place."""
        start_time = time.time()
        synapse = Synapse()
        try:
            try:
                synapse = await self._steps.preprocess(request)
            except SynapseException as exc:
                if exc.synapse is not None:
                    synapse = exc.synapse
                raise
            await self._steps.blacklist(synapse)
            await self._steps.verify(synapse)
            await self._steps.priority(synapse)
            return await self._run(request, str(synapse.name))
        except InvalidRequestNameError as exc:
            if synapse.axon is None:
                synapse.axon = TerminalInfo()
            synapse.axon.status_code = 400
            synapse.axon.status_message = str(exc)
            return create_error_response(log_and_handle_error(synapse, exc, start_time=start_time))
        except HTTPException as exc:  # the body check's 400 (neurons/axon_hardening.py answers it so in the app)
            return JSONResponse(status_code=exc.status_code, content={"message": exc.detail})
        except ClientDisconnect:
            # The body ended early: the HTTP guard refused it (over the rate limit, too slow, too large) and answers
            # that itself, or the caller left. Counted there, not an error: bittensor's handler logged one ERROR line
            # per refused request, a log any caller over its rate limit could fill.
            return Response(status_code=400)
        except Exception as exc:  # noqa: BLE001 - the middleware answers every other failure from the synapse
            return create_error_response(log_and_handle_error(synapse, exc, start_time=start_time))

    async def _run(self, request: Request, name: str) -> Response:
        """The attached route: the body read and checked into its synapse once, the forward function, the answer."""
        body = await request.body()
        _, synapse = checked_body(self.axon, name, body, request.headers.get("computed_body_hash", ""))
        start_time = time.time()  # as the route's endpoint times it (the answer's `process_time`)
        answer = self.axon.forward_fns[name](synapse)
        if inspect.isawaitable(answer):
            answer = await answer
        return await self._steps.synapse_to_response(synapse=answer, start_time=start_time)


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("SynapseDispatch uses the middleware's steps, not the middleware")
