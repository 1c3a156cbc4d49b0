"""The HTTP layer in front of the axon: connection limits, timeouts, body limits, arrival stamps.

bittensor's axon runs uvicorn with no header or body read timeout, no connection cap and no body
size limit (SN72.md). Two pieces close those gaps without touching bittensor's own code:

- `guarded_protocol(...)` subclasses uvicorn's h11 protocol: a per-address and a total connection
  cap (at the total cap the connection idle longest is closed first), a deadline for a request's
  headers, and the arrival stamp: the monotonic time the request's first byte was read, put into
  the ASGI scope so deadlines count the time a request waited behind others in this process.
- `HttpGuard` is plain ASGI middleware around the axon's app: it refuses a body over the size
  limit before reading it, bounds the time to receive a body, exposes the request's state to the
  handlers through a context variable, and reports every response (status, when it left) so late
  answers are counted where the client would see them.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import resource
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from loguru import logger
from uvicorn.protocols.http.h11_impl import H11Protocol

from neurons.deadlines import client_deadline, sane_timeout, sent_before_arrival_s

ARRIVAL_KEY = "sn72.arrival_s"  # scope key set by the protocol, read by the middleware
_DEADLINE_HEADERS = (b"timeout", b"bt_header_dendrite_nonce")
CLIENT_GONE = 499  # the status nginx uses for "the client closed the connection before the answer"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class HttpLimits:
    max_request_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    max_connections_per_ip: int
    max_concurrent_requests: int = 128
    timeout_cap_s: float = 12.0
    nonce_trust_s: float = 4.0


@dataclass
class RequestState:
    """One request as the HTTP layer and the handlers share it (through `CURRENT`)."""

    arrival_s: float  # monotonic: first byte of the request read by this process
    path: str
    client_deadline_s: float | None = None  # monotonic: when the caller stops waiting (set after verification)
    hotkey: str | None = None  # set only once the signature is verified
    rate_limited: bool = False
    status: int = 0
    answered_s: float = 0.0  # monotonic: when the handler had its answer (the rest is the response path)
    finished_s: float = 0.0
    violation: tuple[int, str, str] | None = None  # the HTTP layer's own refusal: (status, message, outcome)


CURRENT: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar("sn72_request", default=None)

ConnectionEvent = Callable[[str], None]  # reason of a connection the layer closed


def guarded_protocol(limits: HttpLimits, on_close: ConnectionEvent) -> type[H11Protocol]:
    """An h11 protocol class with connection caps, a header deadline and arrival stamps."""
    per_ip: Counter[str] = Counter()
    idle: dict[Any, None] = {}  # connections waiting for a request, oldest first

    class GuardedH11Protocol(H11Protocol):
        _counted = False
        _ip = "?"
        _header_timer: asyncio.TimerHandle | None = None
        _request_started_s: float | None = None
        _stamped: Any = None
        _served = 0  # requests completed on this connection
        _draining = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._ip = self.client[0] if self.client else "?"
            if per_ip[self._ip] >= limits.max_connections_per_ip:
                on_close("connections_per_ip")
                transport.abort()
                return
            if len(self.connections) > limits.max_connections and not self._evict_idle():
                on_close("connections_total")
                transport.abort()
                return
            per_ip[self._ip] += 1
            self._counted = True
            self._wait_for_request()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._counted:
                self._counted = False
                per_ip[self._ip] -= 1
                if per_ip[self._ip] <= 0:
                    del per_ip[self._ip]
            idle.pop(self, None)
            self._cancel_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._request_started_s is None and self._between_requests():
                self._request_started_s = time.monotonic()
            super().data_received(data)
            scope = self.scope
            if scope is not None and scope is not self._stamped:  # a request's headers are complete
                self._stamped = scope
                scope[ARRIVAL_KEY] = self._request_started_s or time.monotonic()  # type: ignore[literal-required]
                self._request_started_s = None
                self._cancel_header_timer()
                idle.pop(self, None)
                if self._draining:
                    self.cycle.keep_alive = False  # answer it, then close

        def on_response_complete(self) -> None:
            self._served += 1
            super().on_response_complete()
            if not self.transport.is_closing():
                self._wait_for_request()

        def shutdown(self) -> None:
            """Graceful shutdown: a connection accepted for a request that has not fully arrived yet gets it
            answered (within the header deadline); idle keep-alive connections close at once."""
            fresh = self._served == 0 or self._request_started_s is not None
            if self._between_requests() and fresh and not self.transport.is_closing():
                self._draining = True  # the header deadline still closes it if nothing comes
                return
            super().shutdown()

        # -- helpers ----------------------------------------------------------------------------
        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _wait_for_request(self) -> None:
            idle[self] = None
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                on_close("header_timeout")
                self.transport.abort()

        def _evict_idle(self) -> bool:
            """Close the connection that has waited longest without sending a request."""
            for victim in idle:
                if victim is not self:
                    idle.pop(victim)
                    on_close("evicted_idle")
                    victim.transport.abort()
                    return True
            return False

    return GuardedH11Protocol


ResponseListener = Callable[[RequestState], None]


class ServiceTime:
    """A high quantile of how long recent answered requests took once their turn came (0 until known).

    NOTE: the fastest answer is the prior's, so this over-estimates what a request that would only get
    the prior needs; skipping one a little early costs nothing the caller would have scored.
    """

    def __init__(self, window: int = 64, quantile: float = 0.75) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._quantile = quantile

    def record(self, seconds: float) -> None:
        self._samples.append(seconds)

    def estimate_s(self) -> float:
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, int(self._quantile * len(ordered)))]


class HttpGuard:
    """ASGI middleware: body size and time limits, the request's shared state, response reporting."""

    def __init__(self, app: Any, limits: HttpLimits, on_response: ResponseListener) -> None:
        self.app = app
        self.limits = limits
        self.on_response = on_response
        # NOTE: the axon's single event loop shares itself among every request it has started: with a
        # thousand at once, each advances a step in turn and all of them finish at the end, late. A
        # bounded number at a time, in arrival order, turns that into first come, first served.
        self._running = asyncio.Semaphore(limits.max_concurrent_requests)
        self.service = ServiceTime()  # how long an answered request takes from its turn to its response
        self.active = 0  # requests inside the app now (for draining and metrics)
        self.waiting = 0  # requests waiting for their turn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = RequestState(arrival_s=scope.get(ARRIVAL_KEY) or time.monotonic(), path=scope.get("path", ""))
        token = CURRENT.set(state)
        try:
            refusal = self._check_length(scope)
            if refusal is not None:
                state.violation = refusal
                await self._send_refusal(send, state)
                return
            self.waiting += 1
            try:
                await self._running.acquire()
            finally:
                self.waiting -= 1
            try:
                started_s = time.monotonic()
                if started_s + self.service.estimate_s() > self._claimed_deadline(scope, state.arrival_s):
                    # It waited its turn until too late for any answer to reach the caller in time: say
                    # so at once, and do not push the requests behind it past their deadlines too.
                    state.violation = (408, "request waited past its timeout", "late_skipped")
                    await self._send_refusal(send, state)
                    return
                self.active += 1
                try:
                    await self.app(scope, self._guarded_receive(receive, state), self._guarded_send(send, state))
                finally:
                    self.active -= 1
                    if not state.finished_s:  # no response went out: the caller went away first
                        state.status, state.finished_s = CLIENT_GONE, time.monotonic()
                    elif state.status == 200:
                        self.service.record(state.finished_s - started_s)
                        self.on_response(state)
            finally:
                self._running.release()
        finally:
            CURRENT.reset(token)

    def _claimed_deadline(self, scope: Scope, arrival_s: float) -> float:
        """The caller's deadline from its (not yet verified) headers: used only to skip work for a caller
        that has already given up, so a lie can only hurt the liar."""
        headers = {name: value for name, value in scope.get("headers", ()) if name in _DEADLINE_HEADERS}
        try:
            nonce: Any = int(headers.get(b"bt_header_dendrite_nonce", b""))
        except ValueError:
            nonce = None
        before_s = sent_before_arrival_s(nonce, arrival_s, self.limits.nonce_trust_s)
        timeout_s = sane_timeout(headers.get(b"timeout", b"").decode("latin-1"), self.limits.timeout_cap_s)
        return client_deadline(arrival_s, timeout_s, before_s)

    def _check_length(self, scope: Scope) -> tuple[int, str, str] | None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return 400, "invalid Content-Length", "refused_bad_length"
                if length > self.limits.max_request_bytes:
                    return (413, f"request body of {length} bytes exceeds the limit of {self.limits.max_request_bytes}",
                            "refused_body_too_large")
        return None

    def _guarded_receive(self, receive: Receive, state: RequestState) -> Receive:
        received = 0
        body_done = False
        until_s = state.arrival_s + self.limits.body_timeout_s

        async def guarded() -> Message:
            nonlocal received, body_done
            if body_done or state.violation is not None:
                return await receive()  # after the body: only a disconnect can come, never time it out
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, until_s - time.monotonic()))
            except TimeoutError:
                state.violation = (408, f"request body not received within {self.limits.body_timeout_s:g}s",
                                   "refused_body_timeout")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limits.max_request_bytes:
                    state.violation = (413, f"request body exceeds the limit of {self.limits.max_request_bytes} bytes",
                                       "refused_body_too_large")
                    return {"type": "http.disconnect"}
                body_done = not message.get("more_body", False)
            return message

        return guarded

    def _guarded_send(self, send: Send, state: RequestState) -> Send:
        replaced = False

        async def guarded(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the app's own (error) response to a refused body is dropped
            if message["type"] == "http.response.start":
                if state.violation is not None:
                    replaced = True
                    await self._send_refusal(send, state)
                    return
                state.status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                await send(message)
                state.finished_s = time.monotonic()
                self.on_response(state)
                return
            await send(message)

        return guarded

    async def _send_refusal(self, send: Send, state: RequestState) -> None:
        assert state.violation is not None
        status, text, _ = state.violation
        body = json.dumps({"message": text}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        state.status = status
        state.finished_s = time.monotonic()
        self.on_response(state)


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise the soft open-files limit towards the hard one (never above `wanted`); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-files limit from {}: {}", soft, exc)
    return soft
