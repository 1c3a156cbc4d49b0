"""The header deadline and keep-alive on one connection (`axon.header_timeout_s` below `axon.keep_alive_s`).

A pooled connection waiting for its caller's next request is idle, not slow: it used to be closed at the header
deadline and counted `closed_header_timeout` (the slow-headers attack's counter), sooner than `keep_alive_s` allows.
The header deadline of a kept-alive connection's next request runs from that request's first byte; a fresh
connection's from its accept, as before.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from neurons.http_limits import HttpLimits
from neurons.server import AxonServer
from sn72_lab.offline import free_port

HEADER_TIMEOUT_S = 0.4
KEEP_ALIVE_S = 4.0
REQUEST = b"GET /ImageSynapse HTTP/1.1\r\nHost: miner\r\n\r\n"


@pytest.fixture
def server() -> Iterator[tuple[AxonServer, list[str]]]:
    closes: list[str] = []
    limits = HttpLimits(1 << 20, HEADER_TIMEOUT_S, 2.0, max_connections=64, max_connections_per_ip=64)
    axon = AxonServer(limits, KEEP_ALIVE_S, 16384, 1.0, closes.append, lambda *_: None, "127.0.0.1",
                      free_port()).start()
    try:
        yield axon, closes
    finally:
        axon.stop(2.0)


def connect(axon: AxonServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", axon.server.config.port), timeout=5)
    sock.settimeout(5)
    return sock


def answer(sock: socket.socket) -> bytes:
    """One whole response (the server answers 503 with a body while it has no axon)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_kept_alive_connection_idle_past_the_header_deadline_still_serves_its_next_request(server):
    axon, closes = server
    with connect(axon) as sock:
        sock.sendall(REQUEST)
        assert answer(sock).startswith(b"HTTP/1.1 503")
        time.sleep(HEADER_TIMEOUT_S * 3)  # idle: past the header deadline, well within keep-alive
        sock.sendall(REQUEST)
        assert answer(sock).startswith(b"HTTP/1.1 503")
    assert "header_timeout" not in closes, closes


def test_slow_headers_on_a_kept_alive_connection_are_cut_off_from_their_first_byte(server):
    axon, closes = server
    with connect(axon) as sock:
        sock.sendall(REQUEST)
        assert answer(sock).startswith(b"HTTP/1.1 503")
        time.sleep(HEADER_TIMEOUT_S * 2)
        began = time.monotonic()
        sock.sendall(REQUEST[:20])  # the next request's headers, never finished
        assert closed(sock)
        held = time.monotonic() - began
    assert HEADER_TIMEOUT_S * 0.8 <= held <= HEADER_TIMEOUT_S + 2.0, held
    assert closes == ["header_timeout"], closes


def test_a_fresh_connection_that_sends_nothing_is_cut_off_at_the_header_deadline(server):
    axon, closes = server
    with connect(axon) as sock:
        began = time.monotonic()
        assert closed(sock)
        assert time.monotonic() - began <= HEADER_TIMEOUT_S + 2.0
    assert closes == ["header_timeout"], closes
