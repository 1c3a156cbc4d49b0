"""Loaded by the miner under test (PYTHONPATH) to report every attempt to reach beyond loopback.

An observation probe, not a fake: lookups and connections still happen; each non-local one is printed first,
so a test can assert the miner never tried (no package installs, no DNS, no downloads at run time).
"""

import ipaddress
import socket
import sys

PREFIX = "SN72-NETWORK-PROBE"
_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect


def _local(host: object) -> bool:
    if host in (None, "", "localhost", b"localhost"):
        return True
    name = host.decode() if isinstance(host, bytes) else str(host)
    try:
        address = ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False  # a name to resolve: that is a network attempt
    return address.is_loopback or address.is_unspecified


def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if not _local(host):
        print(f"{PREFIX} getaddrinfo {host!r}", file=sys.stderr, flush=True)
    return _getaddrinfo(host, *args, **kwargs)


def connect(self, address):  # type: ignore[no-untyped-def]
    if isinstance(address, tuple) and not _local(address[0]):
        print(f"{PREFIX} connect {address!r}", file=sys.stderr, flush=True)
    return _connect(self, address)


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect  # type: ignore[method-assign]
