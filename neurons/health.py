"""The metrics port: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (serving), from the first second.

The miner binds this port itself before any model loads (neurons/listeners.py), so a scrape or a
probe during a five-minute model load gets an answer: `/healthz` 200 while the process is up,
`/readyz` 503 with the phase (`starting`, `loading`, `draining`) until the axon serves, and 503
again from the moment a stop signal closes the listener. The phase is also exported as
`sn72_miner_ready` (0/1) and `sn72_miner_state{state}` (a prometheus_client Enum).

`/status` is JSON for the miner's own tools: pid, phase, and what the miner adds (`Health.details`: the serving
version and the last reload, which `sn72-miner reload` and `--check` read; neurons/reload_command.py).
"""

from __future__ import annotations

import enum
import json
import os
import socket
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Enum as EnumMetric
from prometheus_client.exposition import MetricsHandler


class Phase(enum.StrEnum):
    STARTING = "starting"  # config read, listeners bound: wallet, chain, model checks
    LOADING = "loading"  # placing, loading and warming the experts
    READY = "ready"  # the axon serves
    DRAINING = "draining"  # stop requested: the listener is closed, accepted requests finish


class Health:
    """The miner's phase, as the probes and the metrics see it. Thread-safe (one attribute, set whole)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.phase = Phase.STARTING
        self.details: Callable[[], dict[str, Any]] = dict  # what `/status` adds to pid and phase (set by the miner)
        self._ready = Gauge("sn72_miner_ready", "1 while the miner serves (READY), 0 while starting, loading or "
                            "draining", registry=registry)
        self._state = EnumMetric("sn72_miner_state", "The miner's phase", states=[p.value for p in Phase],
                                 registry=registry)
        self.set(Phase.STARTING)

    def set(self, phase: Phase) -> None:
        self.phase = phase
        self._ready.set(1.0 if phase is Phase.READY else 0.0)
        self._state.state(phase.value)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "phase": self.phase.value, **self.details()}


def _handler(registry: CollectorRegistry, health: Health) -> type[MetricsHandler]:
    base = MetricsHandler.factory(registry)

    class Handler(base):  # type: ignore[misc,valid-type]
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._plain(200, "ok")
            elif path == "/readyz":
                self._plain(200 if health.ready else 503, health.phase.value)
            elif path == "/status":
                self._plain(200, json.dumps(health.status()), "application/json")
            elif path in ("/metrics", "/"):
                super().do_GET()
            else:
                self._plain(404, "not found: /metrics, /healthz, /readyz, /status")

        def _plain(self, status: int, text: str, kind: str = "text/plain") -> None:
            body = f"{text}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class MetricsServer:
    """Serves `/metrics`, `/healthz`, `/readyz` on a socket the miner already bound, from a daemon thread."""

    def __init__(self, sock: socket.socket, registry: CollectorRegistry, health: Health) -> None:
        self.server = ThreadingHTTPServer(sock.getsockname()[:2], _handler(registry, health), bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock  # ours: bound before anything else started, never rebound
        self.server.daemon_threads = True
        self.server.server_activate()
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def address(self) -> Any:
        return self.server.server_address
