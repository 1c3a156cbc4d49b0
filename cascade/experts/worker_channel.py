"""The miner's end of a worker process's socket (cascade/experts/worker.py): answers read on the engine's loop,
batches written by a sending thread of the channel's own."""

from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import select
import socket
import threading
from typing import TYPE_CHECKING, Any

from cascade.experts.worker_wire import FrameReader, frame_parts

if TYPE_CHECKING:
    from cascade.experts.worker import WorkerExpert

SEND_PARTS_PER_CALL = 512  # within every kernel's IOV_MAX (1,024 on Linux)


class Channel(asyncio.Protocol):
    """The miner's end of one worker's socket: answers are read on the engine's loop and resolve their batch's
    future; batches are written by a thread of the channel's own (`send`).

    NOTE: not through the loop's transport. A batch is megabytes (a JPEG is ~50 KB, a batch 100 of them) and a
    socket's buffer a few hundred kilobytes, so the transport wrote a buffer's worth per turn of the loop, and a
    turn under load runs hundreds of requests' callbacks: the worker waited for the rest of its batch (measured:
    idle 40% of the time at 512 clients, docs/performance.md). The writer blocks in the kernel without the
    interpreter lock until the worker has read the batch, whatever the loop is doing.
    """

    def __init__(self, owner: WorkerExpert, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.owner = owner
        self.loop = loop
        self.sock = sock
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self._outbox: queue.SimpleQueue[list[bytes | memoryview] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_forever, name=f"send-{owner.replica}", daemon=True)
        self._own_socket: socket.socket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._own_socket = self.sock.dup()  # the writer's (see _write_forever): the worker sees EOF once both close
        self._writer.start()

    def close(self) -> None:
        """From any thread: the transport closed on its loop (connection_lost follows), or here when the loop has
        stopped (nothing would service the transport again)."""
        if self.transport is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.transport.close)
        else:
            self.sock.close()
            self.stop_writer()

    def stop_writer(self) -> None:
        self._outbox.put(None)  # after what is queued: a closing channel does not drop a batch it took

    def send(self, message: Any) -> None:
        """Queue a message for the worker (any thread); sent whole and in order by the writer thread."""
        self._outbox.put(frame_parts(message))

    def _write_forever(self) -> None:
        """Writer thread. The socket is non-blocking (the loop reads it), so a full buffer is waited out in select.

        Ends at `stop_writer` (connection_lost, close), or when the worker is gone.
        """
        # A descriptor of the writer's own, closed only here: the loop may close its socket at any moment, and a
        # send racing that close could otherwise reach whatever file reused the number (another connection).
        assert self._own_socket is not None
        with self._own_socket as sock:
            while (parts := self._outbox.get()) is not None:
                try:
                    send_all(sock, parts)
                except OSError:  # the worker is gone: the loop's reader sees it too and fails the batches
                    return

    def data_received(self, data: bytes) -> None:
        try:
            messages = list(self.reader.feed(data))
        except ValueError as exc:  # a broken stream: treat as a dead worker
            self.owner.lost(self, f"{exc}")
            return
        for message in messages:
            future = self.pending.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_writer()
        self.owner.lost(self, "its socket closed" if exc is None else repr(exc))

    def fail_pending(self, error: Exception) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)


def send_all(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """Every part, in order, on a non-blocking socket: gathered into as few system calls as the socket's buffer
    allows (one call per part would wait for the interpreter lock once per JPEG of the batch)."""
    views = collections.deque(view for view in (memoryview(part).cast("B") for part in parts) if view.nbytes)
    while views:
        try:
            sent = sock.sendmsg(list(itertools.islice(views, SEND_PARTS_PER_CALL)))
        except BlockingIOError:
            select.select([], [sock], [], 1.0)
            continue
        while sent:
            if sent >= views[0].nbytes:
                sent -= views.popleft().nbytes
            else:
                views[0], sent = views[0][sent:], 0
