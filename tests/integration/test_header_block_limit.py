"""`axon.max_header_bytes` holds however the header block arrives.

h11's limit counts only a block still arriving: one written in a single send was parsed whole and served (the red
team's "one 100 KB header line" was answered 400 "image: empty payload" by the miner, and its connection kept
alive). The guard counts the parsed block: over the limit it answers 431 and closes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from neurons.http_limits import HttpLimits
from neurons.server import AxonServer
from sn72_lab.offline import free_port

LIMIT = 16 * 1024


@pytest.fixture
def server() -> Iterator[tuple[AxonServer, list[str]]]:
    closes: list[str] = []
    limits = HttpLimits(1 << 20, 5.0, 5.0, max_connections=64, max_connections_per_ip=64, max_header_bytes=LIMIT)
    axon = AxonServer(limits, 5.0, LIMIT, 1.0, closes.append, lambda *_: None, "127.0.0.1", free_port()).start()
    try:
        yield axon, closes
    finally:
        axon.stop(2.0)


def exchange(axon: AxonServer, header_lines: list[bytes]) -> tuple[bytes, bool]:
    """The status line of the answer to one request with `header_lines`, sent in one write, and whether the
    connection was closed after it (a reset counts as closed)."""
    request = b"POST /ImageSynapse HTTP/1.1\r\nHost: miner\r\nContent-Length: 2\r\n" + b"".join(
        line + b"\r\n" for line in header_lines) + b"\r\n{}"
    with socket.create_connection(("127.0.0.1", axon.server.config.port), timeout=5) as sock:
        sock.settimeout(5)
        sock.sendall(request)
        data = b""
        while not (b"\r\n\r\n" in data and data.endswith(b"}")):  # every answer here has a JSON body
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return data.split(b"\r\n", 1)[0], True
            data += chunk
        sock.settimeout(1.0)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        except ConnectionResetError:
            closed = True
        return data.split(b"\r\n", 1)[0], closed


@pytest.mark.parametrize("lines", [[b"x-junk: " + b"a" * 100_000],
                                   [b"x-junk-%d: value" % i for i in range(2000)],
                                   [b"x-junk: " + b"a" * (LIMIT + 10)]],
                         ids=["one-100KB-line", "2000-lines", "just-over"])
def test_a_header_block_over_the_limit_is_refused_and_the_connection_closed(server, lines):
    axon, _ = server
    status, closed = exchange(axon, lines)
    assert status.split(b" ")[1] in (b"400", b"431"), status  # 400: h11 refused it while it was still arriving
    assert closed


def test_a_header_block_within_the_limit_is_served(server):
    axon, _ = server
    status, closed = exchange(axon, [b"x-note: " + b"a" * (LIMIT // 2)])
    assert status == b"HTTP/1.1 503 Service Unavailable", status  # no axon in this server: "not ready", not refused
    assert not closed
