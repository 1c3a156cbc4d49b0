"""Runs the axon's uvicorn server behind the HTTP guard, on a thread this process can wait for.

`Axon.start()` runs uvicorn on a daemon thread nobody joins, and `Axon.stop()` only raises a flag:
the process used to exit while uvicorn was still finishing requests, resetting their connections.
Here `stop()` asks uvicorn for its graceful shutdown (stop accepting at the listener, close idle
keep-alive connections, let every accepted request finish, bounded by the drain timeout) and
returns only once the server thread has ended.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from loguru import logger

from neurons.http_guard import ConnectionEvent, HttpGuard, HttpLimits, ResponseListener, guarded_protocol


class AxonServer:
    def __init__(
        self,
        axon: Any,
        limits: HttpLimits,
        keep_alive_s: float,
        max_header_bytes: int,
        drain_timeout_s: float,
        on_close: ConnectionEvent,
        on_response: ResponseListener,
        sock: socket.socket | None = None,
    ) -> None:
        config = axon.fast_config
        self.guard = HttpGuard(axon.app, limits, on_response)
        config.app = self.guard
        config.http = guarded_protocol(limits, on_close)
        config.timeout_keep_alive = keep_alive_s
        config.h11_max_incomplete_event_size = max_header_bytes
        config.timeout_graceful_shutdown = max(1, round(drain_timeout_s))
        config.backlog = max(config.backlog, limits.max_connections)
        self.axon = axon
        self.server = axon.fast_server
        self._sockets = None if sock is None else [sock]  # bound and listening already (neurons/startup.py)
        self._thread = threading.Thread(target=self._serve, name="axon-http", daemon=True)
        self._error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run(sockets=self._sockets)
        except BaseException as exc:  # noqa: BLE001 - uvicorn exits with SystemExit when it cannot bind
            self._error = exc

    def start(self, timeout_s: float = 30.0) -> None:
        """Start serving; returns once uvicorn listens, raises if it could not (e.g. the port is taken)."""
        self._thread.start()
        until = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the axon could not listen on {self.server.config.host}:{self.server.config.port}"
                                   f" ({self._error!r}); is the port in use?")
            if time.monotonic() > until:
                raise RuntimeError(f"the axon did not start listening within {timeout_s:.0f}s")
            time.sleep(0.01)
        self.axon.started = True

    def connections(self) -> int:
        return len(self.server.server_state.connections)

    def stop(self, timeout_s: float) -> bool:
        """Graceful shutdown; True when every accepted request was answered before `timeout_s`."""
        open_now = self.connections()
        logger.info("draining: listener closed, {} connections open", open_now)
        self.server.should_exit = True
        self._thread.join(timeout_s + 5.0)
        self.axon.started = False
        if self._thread.is_alive():
            logger.warning("the HTTP server did not stop within {:.0f}s", timeout_s + 5.0)
            return False
        return True
