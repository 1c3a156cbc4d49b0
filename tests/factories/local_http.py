"""A local HTTP server on loopback for a tool under test to talk to: a fake NATIX API, a fake Hugging Face Hub, a port
held by something that is not a miner. The test gives one function that answers every request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (method, path with its query, headers, body) -> (status, Content-Type or "" for none, body)
Handle = Callable[[str, str, Any, bytes], tuple[int, str, bytes]]

# How often the serving thread looks for `shutdown`: http.server's default (0.5 s) made each test's teardown wait
# half a second for it.
POLL_INTERVAL_S = 0.02


@contextmanager
def local_http_server(handle: Handle) -> Iterator[str]:
    """A threading HTTP server on 127.0.0.1 (a free port) answering GET and POST with `handle`; its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, content_type, data = handle(method, self.path, self.headers, body)
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL_S}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
