"""The axon's HTTP server: uvicorn behind the HTTP guard, listening from the first second, on a thread this process
can wait for.

The miner binds its port before any model loads (neurons/startup.py). A request that arrived while the models
loaded used to sit in the listen backlog until the caller's 9 s ran out (before 2026-12-04): this server starts
serving at once, and until `open` hands it the axon every request is refused 503 with the reason (`refused_not_ready`),
before its body is read.

`Axon.start()` runs uvicorn on a daemon thread nobody joins, and `Axon.stop()` only raises a flag: the process
used to exit while uvicorn was still finishing requests, resetting their connections. Here `stop()` asks uvicorn
for its graceful shutdown (stop accepting at the listener, close idle keep-alive connections, let every accepted
request finish, bounded by the drain timeout) and returns only once the server thread has ended.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from loguru import logger

from neurons.http_guard import ConnectionEvent, HttpGuard, HttpLimits, ResponseListener, guarded_protocol


class AxonServer:
    def __init__(
        self,
        limits: HttpLimits,
        keep_alive_s: float,
        max_header_bytes: int,
        drain_timeout_s: float,
        on_close: ConnectionEvent,
        on_response: ResponseListener,
        host: str,
        port: int,
        event_loop: str = "asyncio",
        sock: socket.socket | None = None,
    ) -> None:
        self.guard = HttpGuard(None, limits, on_response)  # no app yet: 503 until `open`
        config = uvicorn.Config(
            self.guard,
            host=host,
            port=port,
            loop=event_loop,
            http=guarded_protocol(limits, on_close),
            ws="none",  # no WebSocket protocol to hand a connection to (the guard refuses upgrades anyway)
            lifespan="off",  # the axon's FastAPI app has no start-up or shut-down handlers
            proxy_headers=False,  # no proxy in front: X-Forwarded-For from loopback must not rename the caller
            log_level="critical",  # as bittensor runs it: the guard and the miner count and log what matters
            timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]  # seconds to call_later: a float works
            h11_max_incomplete_event_size=max_header_bytes,
            timeout_graceful_shutdown=max(1, round(drain_timeout_s)),
            backlog=max(2048, limits.max_connections),
        )
        self.axon: Any = None
        self.server = uvicorn.Server(config)
        self._sockets = None if sock is None else [sock]  # bound and listening already (neurons/startup.py)
        self._thread = threading.Thread(target=self._serve, name="axon-http", daemon=True)
        self._error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run(sockets=self._sockets)
        except BaseException as exc:  # noqa: BLE001 - uvicorn exits with SystemExit when it cannot bind
            self._error = exc

    def start(self, timeout_s: float = 30.0) -> AxonServer:
        """Start serving (503 until `open`); returns once uvicorn listens, raises if it could not (port taken)."""
        self._thread.start()
        until = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the axon could not listen on {self.server.config.host}:{self.server.config.port}"
                                   f" ({self._error!r}); is the port in use?")
            if time.monotonic() > until:
                raise RuntimeError(f"the axon did not start listening within {timeout_s:.0f}s")
            time.sleep(0.01)
        return self

    def open(self, axon: Any, on_response: ResponseListener | None = None, dispatch: str = "direct") -> None:
        """Serve `axon` (its handlers attached and hardened) from now on; `on_response` replaces the listener;
        `dispatch`: "direct" (neurons/axon_dispatch.py) or "fastapi" (the axon's own app)."""
        from neurons.axon_dispatch import SynapseDispatch

        self.axon = axon
        app = SynapseDispatch(axon) if dispatch == "direct" else axon.app
        self.guard.open(app, on_response, frozenset(axon.forward_class_types))
        axon.started = True

    def connections(self) -> int:
        return len(self.server.server_state.connections)

    def stop(self, timeout_s: float) -> bool:
        """Graceful shutdown; True when every accepted request was answered before `timeout_s`."""
        open_now = self.connections()
        logger.info("draining: listener closed, {} connections open", open_now)
        self.server.should_exit = True
        self._thread.join(timeout_s + 5.0)
        if self.axon is not None:
            self.axon.started = False
        if self._thread.is_alive():
            logger.warning("the HTTP server did not stop within {:.0f}s", timeout_s + 5.0)
            return False
        return True
