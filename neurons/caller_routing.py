"""One listening socket per front process on the axon's port, each caller's address always handed to the same one.

Linux's SO_REUSEPORT lets several sockets listen on one port and spreads new connections between them; by
default it picks by a hash of both ends' addresses and ports, so one caller's connections land on every front,
and each front's per-address caps (connections, request slots, body bytes) would hold N times over. A classic BPF
program attached to the group (SO_ATTACH_REUSEPORT_CBPF, Linux 4.5+) picks the socket from the caller's address
alone, mixed with secrets chosen at start-up (so no caller can pick its front): every per-address cap is then
kept by exactly one front, as configured. The program reads the source address through the network-header
offset (SKF_NET_OFF), IPv4 or the last 32 bits of an IPv6 address.

The miner process keeps its copy of every socket until it drains: a connection meant for a front that is being
restarted waits in that socket's backlog (it is not refused, and no other front's caps are charged for it).
"""

from __future__ import annotations

import ctypes
import secrets
import socket
import struct
from typing import Any

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>
_SKF_AD_PROTOCOL = -0x1000  # SKF_AD_OFF + SKF_AD_PROTOCOL: the packet's ethertype
_SKF_NET_OFF = -0x100000  # offsets from the network header
_ETH_P_IPV6 = 0x86DD
# opcodes (<linux/filter.h>)
_LD_W_ABS, _LD_H_ABS, _JEQ_K, _JA, _TAX = 0x20, 0x28, 0x15, 0x05, 0x07
_MUL_K, _RSH_K, _XOR_X, _MOD_K, _RET_A = 0x24, 0x74, 0xAC, 0x94, 0x16


def caller_program(groups: int, secrets_: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """The socket's index in the group: the source address through a multiply-xorshift mix (MurmurHash3's
    finaliser, with two secret odd multipliers), mod `groups`. Neighbouring addresses land apart: a plain multiply
    sent runs of four or five consecutive addresses to one front (the outside test of 5 December)."""
    first, second = secrets_

    def xorshift(bits: int) -> list[tuple[int, int, int, int]]:
        return [(_TAX, 0, 0, 0), (_RSH_K, 0, 0, bits), (_XOR_X, 0, 0, 0)]  # A ^= A >> bits

    return [
        (_LD_H_ABS, 0, 0, _SKF_AD_PROTOCOL),
        (_JEQ_K, 0, 2, _ETH_P_IPV6),
        (_LD_W_ABS, 0, 0, _SKF_NET_OFF + 8 + 12),  # IPv6: the source address's last 32 bits
        (_JA, 0, 0, 1),
        (_LD_W_ABS, 0, 0, _SKF_NET_OFF + 12),  # IPv4: the source address
        *xorshift(16), (_MUL_K, 0, 0, first),
        *xorshift(13), (_MUL_K, 0, 0, second),
        *xorshift(16),
        (_MOD_K, 0, 0, groups),
        (_RET_A, 0, 0, 0),
    ]


def route_by_caller(sock: socket.socket, groups: int, secret: int | None = None) -> None:
    """Attach the program to `sock`'s reuseport group (which must hold `groups` listening sockets)."""
    program = caller_program(groups, (secrets.randbits(31) * 2 + 1, secrets.randbits(31) * 2 + 1) if secret is None
                             else (secret, secret))
    code = b"".join(struct.pack("HBBI", op, jt, jf, k & 0xFFFFFFFF) for op, jt, jf, k in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    sock_fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, sock_fprog)  # the kernel copies the program


def listeners_by_caller(address: Any, family: socket.AddressFamily, groups: int,
                        backlog: int) -> list[socket.socket]:
    """`groups` listening sockets on `address`, routed by caller. OSError (EADDRINUSE when another process has the
    port: a plain bind is tried first, since a same-user SO_REUSEPORT listener would otherwise be joined silently)."""
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    finally:
        probe.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(groups):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(backlog)
        route_by_caller(sockets[0], groups)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets

