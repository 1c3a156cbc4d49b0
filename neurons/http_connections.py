"""uvicorn's h11 protocol with connection caps, a header deadline, and marks on each request's scope.

bittensor's axon runs uvicorn with no header read timeout and no connection cap (docs/protocol.md).
`guarded_protocol`
subclasses uvicorn's h11 protocol to add, per connection:

- a per-address and a total connection cap (at the total cap the connection idle longest is closed first);
  every counted connection is uncounted in `connection_lost`, the one exit asyncio always calls on the protocol
  that owns the transport: so nothing may hand the transport to another protocol (a WebSocket upgrade did, and
  each one leaked a slot of its address for good: defect 4 of the second red-team pass, docs/security.md);
- a deadline for a request's headers;
- no chunked body is ever parsed: h11 turned each chunk into an event, so 1-byte chunks cost the event loop a Python
  round per byte of body (two connections took an honest validator to 3-9% answered). After a request head that
  names a Transfer-Encoding, parsing stops there (`_HeadFirstConnection`) and the middleware refuses it (411, or 400
  with a Content-Length too); no dendrite sends one (aiohttp posts `json=` with a Content-Length);
- a response sent before its request's body was read (a refusal: 401, 403, 429 ...) ends the connection: the rest of
  the body is never parsed, only discarded unread for a short linger (so the caller reads its answer rather than
  a reset) and the connection closed after it;
- marks on the request's ASGI scope, read by the middleware (neurons/http_guard.py): when its first byte was
  read (`ARRIVAL_KEY`, so deadlines count the time it waited behind others here), which address sent it
  (`CALLER_KEY`, the transport's peer: no header can change it), that it asked for a protocol upgrade
  (`UPGRADE_KEY`: refused, never performed), and when its client went away, or sent what h11 refused, before the
  response was complete (`GONE_KEY`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from neurons.http_limits import HttpLimits

ARRIVAL_KEY = "sn72.arrival_s"  # monotonic: the request's first byte read
CALLER_KEY = "sn72.caller"  # the peer address of the connection
UPGRADE_KEY = "sn72.upgrade"  # the request asked to switch protocols (Connection: upgrade)
GONE_KEY = "sn72.gone_s"  # monotonic: the connection was lost before the response was complete

ConnectionEvent = Callable[[str], None]  # reason of a connection the layer closed
# A refused request's unread body up to this size is read and dropped (the connection kept); a larger one ends it.
DRAIN_BYTES = 64 * 1024
LINGER_S = 1.0  # after a refusal sent before the body was read: the rest is discarded unread this long at most


def framed_by_transfer_encoding(headers: Any) -> bool:
    """Whether a request head names a Transfer-Encoding (its body would be chunked): such bodies are never read."""
    return any(name.lower() == b"transfer-encoding" for name, _ in headers)


class _HeadFirstConnection(h11.Connection):
    """h11's connection that parses nothing past the head of a request framed by a Transfer-Encoding: uvicorn sees
    PAUSED (it stops reading) until the middleware's refusal closes the connection."""

    _held = False

    def next_event(self) -> Any:
        if self._held:
            return h11.PAUSED
        event = super().next_event()
        if isinstance(event, h11.Request) and framed_by_transfer_encoding(event.headers):
            self._held = True
        return event


def guarded_protocol(limits: HttpLimits, on_close: ConnectionEvent) -> type[H11Protocol]:
    """An h11 protocol class with connection caps, a header deadline and the scope marks above."""
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
        _linger_timer: asyncio.TimerHandle | None = None
        _discarded = -1  # bytes discarded unread after a refusal (-1: not lingering)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.conn = _HeadFirstConnection(h11.SERVER, self.conn._max_incomplete_event_size)  # as uvicorn set it

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
            if self._linger_timer is not None:
                self._linger_timer.cancel()
            if self.cycle is not None and not self.cycle.response_complete:
                self.scope.setdefault(GONE_KEY, time.monotonic())  # type: ignore[misc]
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._discarded >= 0:  # the request was answered without its body: the rest is never parsed
                self._discarded += len(data)
                if self._discarded > limits.max_request_bytes:
                    self.transport.abort()
                return
            if self._request_started_s is None and self._between_requests():
                if self.conn.their_state is h11.SEND_BODY:
                    # The rest of a small body answered before it was read (drained, the connection kept): not a
                    # next request's first bytes. It has LINGER_S to end, as a large one has (taken for a request,
                    # a trickle held the connection to the header deadline and was counted a second time).
                    if self._linger_timer is None:
                        self._linger_timer = self.loop.call_later(min(LINGER_S, limits.body_timeout_s),
                                                                  self._end_unread_body)
                else:
                    self._request_started_s = time.monotonic()
                    if self._header_timer is None:  # a kept-alive connection's next request: its deadline starts
                        self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)
            super().data_received(data)
            scope = self.scope
            if scope is not None and scope is not self._stamped:  # a request's headers are complete
                self._stamped = scope
                scope[ARRIVAL_KEY] = self._request_started_s or time.monotonic()  # type: ignore[literal-required]
                scope[CALLER_KEY] = self._ip  # type: ignore[literal-required]
                self._request_started_s = None
                self._cancel_header_timer()
                idle.pop(self, None)
                if self._draining:
                    self.cycle.keep_alive = False  # answer it, then close

        def send_400_response(self, msg: str) -> None:
            """h11 refused what followed on this connection (uvicorn answers 400 and closes): a request still in
            progress here can no longer be answered, which its handlers must see as a client gone, not a failure."""
            if self.cycle is not None and not self.cycle.response_complete:
                self.scope.setdefault(GONE_KEY, time.monotonic())  # type: ignore[misc]
            super().send_400_response(msg)

        def _should_upgrade(self) -> bool:
            """Never switch protocols: the request is answered (refused) over HTTP on this protocol, which keeps
            the transport, so `connection_lost` still uncounts the connection."""
            if self._get_upgrade() is not None:
                self.scope[UPGRADE_KEY] = True  # type: ignore[literal-required]
            return False

        def on_response_complete(self) -> None:
            self._served += 1
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.SEND_BODY and self._declared_length() > DRAIN_BYTES:
                self._linger()  # answered (refused) before a large body was read: read no more of it
                return
            # A small unread body (an honest client's refused request, already sent whole) is drained by uvicorn's
            # own path (Data after the response is dropped) and the connection kept: a client that reuses it, as
            # http.client and pooled dendrites do, must not meet a closed socket on its next request.
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
            """A fresh connection's headers are due within the header deadline of its accept. A kept-alive one is
            idle until its next request's first byte, which starts that request's deadline (`data_received`):
            uvicorn's keep-alive timer closes it if nothing comes (with `header_timeout_s` below `keep_alive_s`,
            an idle pooled connection used to be closed early and counted as a slow-headers attack)."""
            idle[self] = None
            self._cancel_header_timer()
            if self._served == 0:
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

        def _declared_length(self) -> int:
            for name, value in getattr(self, "headers", []):
                if name == b"content-length":
                    try:
                        return int(value)
                    except ValueError:
                        return DRAIN_BYTES + 1
            return DRAIN_BYTES + 1

        def _linger(self) -> None:
            """Read no more of this connection: half-close it, discard what still comes (bounded in time and bytes),
            then close. NOTE: closing at once would reset a connection with unread data, and a reset can destroy
            the answer before the caller reads it (an honest validator's 401 or 429 on a large body)."""
            on_close("refused_unread_body")
            self._unset_keepalive_if_required()
            self._discarded = 0
            self.transport.resume_reading()
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._linger_timer = self.loop.call_later(min(LINGER_S, limits.body_timeout_s), self.transport.close)

        def _end_unread_body(self) -> None:
            """A refused request's small body still arriving LINGER_S after its answer: read no more of it (its
            request was counted when it was answered)."""
            self._linger_timer = None
            if self.conn.their_state is h11.SEND_BODY and self._between_requests() and not self.transport.is_closing():
                self._unset_keepalive_if_required()
                self.transport.close()

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
