"""The HTTP layer in front of the axon: request refusals, body limits, fair request slots, one report per response.

bittensor's axon runs uvicorn with no header or body read timeout, no connection cap and no body
size limit (docs/protocol.md). Two pieces close those gaps without touching bittensor's own code:

- `guarded_protocol(...)` (neurons/http_connections.py) subclasses uvicorn's h11 protocol: connection caps,
  a header deadline, and marks on each request's scope (arrival time, caller address, upgrade asked,
  client gone).
- `HttpGuard` is plain ASGI middleware around the axon's app. Before the app sees a request it refuses
  what the stock axon answers badly (500, or a closed connection): protocol upgrades, methods other than
  POST and GET, paths that cannot name a synapse, bodies declared over the size limit, chunked bodies (411; 400
  with a Content-Length too), and every request while the miner is not ready (no app yet). Then it gives the
  request its turn (neurons/request_slots.py), bounds the time to receive its body from that turn, the bytes of
  bodies in flight (`ByteBudget`) and the JSON structure of each body as it arrives (a cheap count, before any
  parse), answers a request over its caller's rate limit 429 without reading its body, exposes the request's
  state to the handlers through a context variable, and reports every request to its listener exactly once, when
  it is over: its status (499 if the client went away first) and when the response left, so late answers are
  counted where the client would see them.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import resource
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from cascade.in_time import in_time
from neurons.deadlines import ServiceTime, client_deadline, sane_timeout, sent_before_arrival_s
from neurons.http_connections import (
    ARRIVAL_KEY,
    CALLER_KEY,
    GONE_KEY,
    UPGRADE_KEY,
    ConnectionEvent,
    framed_by_transfer_encoding,
    guarded_protocol,
)
from neurons.http_limits import HttpLimits
from neurons.request_slots import ByteBudget, RequestSlots

__all__ = ["CLIENT_GONE", "CURRENT", "ConnectionEvent", "HttpGuard", "HttpLimits", "RequestState", "ResponseListener",
           "guarded_protocol", "raise_fd_limit"]

_DEADLINE_HEADERS = (b"timeout", b"bt_header_dendrite_nonce")
CLIENT_GONE = 499  # the status nginx uses for "the client closed the connection before the answer"
NOT_READY = "the miner is starting (its models are loading): not serving yet"
# The axon's routes are `/<synapse class name>`: anything else is no route, and some such paths (a NUL, bytes
# that are not UTF-8) made the stock axon fail while writing its 404 (500, or the connection closed).
_ROUTE = re.compile(r"/[A-Za-z_][A-Za-z0-9_]{0,127}")
_METHODS = ("POST", "GET")  # GET stays the axon's (400/401 without a body); HEAD closed the connection unanswered
_STRUCTURE = (b"{", b"[", b":", b",", b"\\")  # what a JSON parse costs per item: counted, never parsed, on the loop
_SHOWN = re.compile(r"[^\x21-\x7e]")  # shown back to a caller: printable ASCII only


def _claimed_hotkey(scope: Scope) -> str | None:
    """The hotkey a request claims (unverified: used only to pick whose service time judges it)."""
    for name, value in scope.get("headers", ()):
        if name == b"bt_header_dendrite_hotkey":
            return str(value[:64].decode("latin-1"))
    return None


def _shown(text: str, limit: int = 64) -> str:
    """A caller's method or path as an answer may repeat it: printable ASCII, at most `limit` characters."""
    cleaned = _SHOWN.sub("?", text[:limit])
    return cleaned + "..." if len(text) > limit else cleaned

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Refusal = tuple[int, str, str]  # status, message for the caller, outcome for the counters


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
    violation: Refusal | None = None  # the HTTP layer's own refusal
    outcome: str = ""  # the engine's answer's counter (answered_*, refused_bad_image); with front processes counted
    # from the report, once the answer has left (a front that dies first loses it: `closed_front_died` instead)


CURRENT: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar("sn72_request", default=None)


ResponseListener = Callable[[RequestState], None]


class _ErrorLog:
    """A failure inside the app is logged with its traceback, at most once a minute per kind: a caller that found
    a way to trigger one must not be able to flood the log with it (it is counted per response as well)."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self._interval_s = interval_s
        self._last_s: dict[str, float] = {}

    def error(self, exc: BaseException, state: RequestState) -> None:
        kind = type(exc).__qualname__
        now_s = time.monotonic()
        if now_s - self._last_s.get(kind, -self._interval_s) >= self._interval_s:
            self._last_s[kind] = now_s
            logger.opt(exception=exc).error("request to {} failed inside the axon: {!r} (answered 500; logged once a "
                                            "minute per kind, counted as error_500)", state.path[:64], exc)


class HttpGuard:
    """ASGI middleware: refusals before the app, fair turns, body limits, the request's shared state, one report
    per request. `app` None: the miner is not ready yet, and every request is refused 503 until `open`."""

    def __init__(self, app: Any, limits: HttpLimits, on_response: ResponseListener) -> None:
        self.app = app
        self.limits = limits
        self.on_response = on_response
        self.slots = RequestSlots(limits.max_concurrent_requests, limits.requests_per_ip)
        self.bodies = ByteBudget(limits.bodies_in_flight_bytes)  # bytes of bodies in flight (by Content-Length)
        self.service = ServiceTime()  # per caller: how long its answered requests take from their turn to a response
        self.active = 0  # requests inside the app now (for draining and metrics)
        self.routes: frozenset[str] | None = None  # the synapse names served (None: any name the app may know)
        self._errors = _ErrorLog()

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        return self.slots.waiting

    def open(self, app: Any, on_response: ResponseListener | None = None,
             routes: frozenset[str] | None = None) -> None:
        """Start serving `app` (the miner is ready); `on_response` replaces the listener if given; `routes`: the
        synapse names the app serves (any other path is refused here, 404, and counted)."""
        if on_response is not None:
            self.on_response = on_response
        self.routes = routes
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if self.app is not None:
                await self.app(scope, receive, send)
            return
        state = RequestState(arrival_s=scope.get(ARRIVAL_KEY) or time.monotonic(), path=scope.get("path", ""))
        token = CURRENT.set(state)
        try:
            await self._handle(scope, receive, send, state)
        except Exception as exc:  # a failure inside the app is a 500, logged and counted, never silent
            if GONE_KEY in scope:
                return  # the connection ended first (sending to it is what failed): reported as 499, no failure
            self._errors.error(exc, state)
            if state.status:  # the response had started: all that is left is to close the connection
                raise
            await self._send_refusal(send, state, (500, "internal error", "error_500"))
        finally:
            self._report(scope, state)
            CURRENT.reset(token)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, state: RequestState) -> None:
        refusal = self._refusal_before_turn(scope)
        if refusal is not None:
            await self._send_refusal(send, state, refusal)
            return
        caller = scope.get(CALLER_KEY) or "?"
        async with self.slots.turn(caller):
            turn_s = time.monotonic()
            if GONE_KEY in scope:
                return  # its client left while it waited: nothing to answer (reported as 499)
            if not in_time(turn_s, self.service.estimate_s(_claimed_hotkey(scope), turn_s),
                           self._claimed_deadline(scope, state.arrival_s)):
                # It waited its turn until too late for any answer to reach the caller in time: say so at once,
                # and do not push the requests behind it past their deadlines too.
                await self._send_refusal(send, state, (408, "request waited past its timeout", "late_skipped"))
                return
            self.active += 1
            reserved = [0]  # bytes of the body budget this request holds
            try:
                receiver = self._guarded_receive(receive, state, turn_s, caller, _declared_length(scope), reserved)
                await self.app(scope, receiver, self._guarded_send(send, state))
            finally:
                self.active -= 1
                self.bodies.release(caller, reserved[0])
            if state.status == 200 and state.finished_s and GONE_KEY not in scope and state.hotkey:
                self.service.record(state.hotkey, state.finished_s - turn_s, state.finished_s)

    def _refusal_before_turn(self, scope: Scope) -> Refusal | None:
        """What the stock axon would answer badly, and everything while the miner is not ready: refused at once."""
        if scope.get(UPGRADE_KEY):
            return 400, "protocol upgrades are not served", "refused_upgrade"
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
        if header_bytes > self.limits.max_header_bytes:
            return (431, f"request header block over {self.limits.max_header_bytes} bytes",
                    "refused_headers_too_large")
        method = scope.get("method", "")
        if method not in _METHODS:
            return 405, f"method not allowed: {_shown(method, 16)} (POST or GET)", "refused_method"
        path = scope.get("path", "")
        if not _ROUTE.fullmatch(path) or (self.routes is not None and path[1:] not in self.routes):
            # bittensor's own 404 for a well-formed unknown name listed every synapse served, and was counted nowhere
            raw_path = scope.get("raw_path") or path.encode("utf-8", "replace")
            return 404, f"no such route: {method} {_shown(raw_path.decode('latin-1'))}", "refused_bad_path"
        if framed_by_transfer_encoding(scope.get("headers", ())):
            # Never read (neurons/http_connections.py stops parsing at the head): a dendrite sends a Content-Length.
            if any(name == b"content-length" for name, _ in scope.get("headers", ())):
                return 400, "Content-Length and Transfer-Encoding together are refused", "refused_bad_framing"
            return 411, "chunked request bodies are not served: send a Content-Length", "refused_chunked"
        refusal = self._check_length(scope)
        if refusal is not None:
            return refusal
        if self.app is None:
            return 503, NOT_READY, "refused_not_ready"
        return None

    def _report(self, scope: Scope, state: RequestState) -> None:
        """Tell the listener how the request ended, once: its status, or 499 if the client left before its answer."""
        gone_s = scope.get(GONE_KEY)
        if gone_s is not None:
            state.status = CLIENT_GONE
            state.finished_s = max(state.finished_s, gone_s)
        elif not state.finished_s:  # the app returned without answering: uvicorn answers 500
            state.status, state.finished_s = 500, time.monotonic()
        try:
            self.on_response(state)
        except Exception as exc:  # noqa: BLE001 - a listener's failure must not fail the request (it is over)
            logger.opt(exception=exc).error("the response listener failed: {!r}", exc)

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

    def _check_length(self, scope: Scope) -> Refusal | None:
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

    def _guarded_receive(self, receive: Receive, state: RequestState, turn_s: float, caller: str, declared: int,
                         reserved: list[int]) -> Receive:
        """The body must arrive within body_timeout_s of the request's turn: the time it waited for a slot is not
        the caller's to answer for (its body may have been sent whole long before). Before its first byte is read,
        a request over its caller's rate limit is answered 429 (its body never read), and the body's declared length
        is reserved from the budget of bodies in flight (`reserved[0]`, given back by the caller of this)."""
        received = 0
        structure = 0
        body_done = False
        until_s = turn_s + self.limits.body_timeout_s

        async def guarded() -> Message:
            nonlocal received, structure, body_done
            if body_done or state.violation is not None:
                return await receive()  # after the body: only a disconnect can come, never time it out
            if state.rate_limited:  # charged after its verification; its body is not worth reading
                state.violation = (429, "rate limit exceeded", "refused_rate_limit")
                return {"type": "http.disconnect"}
            try:
                if not reserved[0] and declared:  # at once when it fits (no task, no step of the loop given up)
                    now = self.bodies.try_reserve(caller, declared)
                    reserved[0] = now if now is not None else await asyncio.wait_for(
                        self.bodies.reserve(caller, declared), timeout=max(0.0, until_s - time.monotonic()))
                message = await asyncio.wait_for(receive(), timeout=max(0.0, until_s - time.monotonic()))
            except TimeoutError:
                state.violation = (408, f"request body not received within {self.limits.body_timeout_s:g}s",
                                   "refused_body_timeout")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.limits.max_request_bytes:
                    state.violation = (413, f"request body exceeds the limit of {self.limits.max_request_bytes} bytes",
                                       "refused_body_too_large")
                    return {"type": "http.disconnect"}
                structure += sum(chunk.count(mark) for mark in _STRUCTURE)  # C speed: about 1 ms a megabyte
                if structure > self.limits.max_body_structure:
                    state.violation = (400, f"request body holds more JSON structure than a synapse (over "
                                       f"{self.limits.max_body_structure} of {{ [ : , \\)", "refused_body_structure")
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
                    await self._send_refusal(send, state, state.violation)
                    return
                state.status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                await send(message)
                state.finished_s = time.monotonic()
                return
            await send(message)

        return guarded

    async def _send_refusal(self, send: Send, state: RequestState, refusal: Refusal) -> None:
        """The layer's own answer (reported by `_report` like any other). The connection ends after it unless the
        request was read whole: the protocol reads nothing more of an unread body, it discards the rest for a short
        linger (so the caller reads this answer rather than a reset) and closes (neurons/http_connections.py)."""
        state.violation = refusal
        status, text, _ = refusal
        body = json.dumps({"message": text}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if refusal[2] in ("refused_upgrade", "error_500", "refused_headers_too_large"):
            headers.append((b"connection", b"close"))  # no next request on a connection in an unknown state
        if status == 405:
            headers.append((b"allow", ", ".join(_METHODS).encode()))
        state.status = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        state.finished_s = time.monotonic()


def _declared_length(scope: Scope) -> int:
    """The request's Content-Length (checked before its turn), 0 if it declares none."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value)
    return 0


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
