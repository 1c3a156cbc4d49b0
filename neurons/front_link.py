"""The link between a front process and the miner process: framed messages on a socket pair, and the payload arena.

Messages are small tuples, pickled (both ends are this program; nothing a caller sent is unpickled: a caller's
bytes travel as `str`/`bytes` values inside tuples the sender built). Each frame is a 4-byte length and the
pickle; the front's frames of one turn of its event loop, and the engine's answers of one turn of its own, go in
one write (one system call, one wake-up). The image, the only large thing, is not pickled: the front writes the
base64 text into its arena (a memfd both processes map, made by the miner process and handed to the front at spawn)
and sends where it lies; the miner process reads it out once, into the `str` the engine takes, before it answers,
so the front frees the space when the answer comes. A payload that finds no room in the arena (fragmentation)
travels inside the message.

Front -> miner: ADMIT (a verified nonce to claim), JOB, OUTCOME (a counter), REPORT (a response, once it is over),
STATS (the HTTP layer's gauges), SERVING (the front answers 503 until open; now it listens), OPENED.
Miner -> front: HELLO (settings), OPEN (serve from now on), SNAPSHOT (the metagraph), ADMITTED, ANSWER.
"""

from __future__ import annotations

import bisect
import mmap
import os
import pickle
import socket
import struct
from typing import Any

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 30  # inline payloads are bounded by axon.max_request_bytes (at most 4 GiB by its own limit)

# front -> miner
ADMIT, JOB, OUTCOME, REPORT, STATS, SERVING, OPENED = "A", "J", "O", "R", "S", "L", "D"
# miner -> front
HELLO, OPEN, SNAPSHOT, ADMITTED, ANSWER = "h", "o", "m", "a", "j"


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class LinkClosed(ConnectionError):
    """The other end is gone."""


class BlockingReader:
    """Frames from a blocking socket (the miner process's side: one thread per front)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def _fill(self, want: int) -> None:
        while len(self._buffer) < want:
            chunk = self._sock.recv(max(65536, want - len(self._buffer)))
            if not chunk:
                raise LinkClosed("link closed")
            self._buffer += chunk

    def read(self) -> tuple[Any, ...]:
        self._fill(HEADER.size)
        (length,) = HEADER.unpack_from(self._buffer)
        if length > MAX_FRAME:
            raise LinkClosed(f"frame of {length} bytes")
        self._fill(HEADER.size + length)
        body = bytes(self._buffer[HEADER.size:HEADER.size + length])
        del self._buffer[:HEADER.size + length]
        message: tuple[Any, ...] = pickle.loads(body)
        return message


# The arena's first 16 bytes: how many requests the front has taken in since it started serving, and how many of
# those are over (answered, refused, or their caller gone). The front writes them, with no system call, as each
# request arrives and ends; the miner process reads them when the front dies: the difference is what it lost,
# whether waiting for a slot, being read or in the engine (a message would be lost with the front if it had not
# left its buffers yet).
ARRIVALS = struct.Struct("QQ")
ARENA_HEADER = 64  # one cache line, then the payloads


def new_arena(size: int) -> int:
    """A shared memory file of `size` bytes (unnamed: gone once both processes close it); its descriptor."""
    fd = os.memfd_create("sn72-front-arena", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def map_arena(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


class ArenaSpace:
    """First-fit allocation of the arena's bytes (the front's, on its event loop only), merging freed neighbours."""

    def __init__(self, size: int, first: int = 0) -> None:
        self.size = size
        self._starts: list[int] = [first]  # free extents, sorted by start
        self._lengths: dict[int, int] = {first: size - first}
        self.used = first

    def take(self, nbytes: int) -> int | None:
        """The offset of `nbytes` free bytes, now taken; None if no free extent is that large."""
        if nbytes <= 0 or nbytes > self.size - self.used:
            return None
        for index, start in enumerate(self._starts):
            length = self._lengths[start]
            if length >= nbytes:
                del self._starts[index]
                del self._lengths[start]
                if length > nbytes:
                    self._starts.insert(index, start + nbytes)
                    self._lengths[start + nbytes] = length - nbytes
                self.used += nbytes
                return start
        return None

    def give_back(self, start: int, nbytes: int) -> None:
        self.used -= nbytes
        index = bisect.bisect_left(self._starts, start)
        end = start + nbytes
        if index < len(self._starts) and self._starts[index] == end:  # merge with the extent after
            nbytes += self._lengths.pop(end)
            del self._starts[index]
        if index > 0:  # and with the one before
            before = self._starts[index - 1]
            if before + self._lengths[before] == start:
                self._lengths[before] += nbytes
                return
        self._starts.insert(index, start)
        self._lengths[start] = nbytes

    def extents(self) -> list[tuple[int, int]]:
        return [(start, self._lengths[start]) for start in self._starts]
