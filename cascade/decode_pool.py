"""Decode capacity shared by caller, and costly images decoded where they can be abandoned (defect 1 of the
second red-team pass, docs/security.md).

Two kinds of capacity, both handed out by `Admission` (the engine's own rule: a caller with fewer decodes running
goes first, then stake, then the earliest deadline, and a caller holds at most its cap):

- `FairThreads`: the decode threads (`scheduler.decode_workers`). Only images whose estimated work is under
  `decode.isolate_above_work` decode there (cascade/decode_cost.py), so a thread is never held long; a slot is
  given back when its thread is done, not when the request stopped waiting for it, so the gate never admits more
  work than there are threads.
- `IsolatedDecoder`: worker processes (`decode.isolated_workers`, cascade/decode_worker.py) for the costly
  images, at most `decode.isolated_per_hotkey` per caller. libjpeg cannot be interrupted, but a process can: at
  the request's deadline its worker is killed (SIGKILL) and a new one started, so an image that costs more than
  its header said holds a worker until that request's deadline and not a second longer, and never a decode
  thread. Each decode holds its estimated bytes of the decode memory budget while it runs.

NOTE: the engine does not start the worker processes (every engine a test builds would start two interpreters):
the miner starts them in the background once the engine is up (`prestart`); without that, the first costly image
pays ~0.5 s for its worker's start.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import IO, TypeVar

import numpy as np
from loguru import logger

from cascade.admission import Admission
from cascade.config import DecodeConfig
from cascade.decode import Decoded, HeavyImage, MemoryBudget, hash_bytes
from cascade.decode_errors import DecodeBusy, DecodeError
from cascade.decode_worker import ANSWER, PIXELS, READY, REQUEST, read_exactly

T = TypeVar("T")
_MAX_WAITING = 1 << 20  # the engine's admission already bounds the requests that can wait here
Outcome = Callable[[str], None]  # counts an isolated decode's outcome (cascade/stats.py)


class FairThreads:
    """The decode thread pool behind a per-caller gate (see the module). Loop-thread only."""

    def __init__(self, executor: Executor, workers: int) -> None:
        self.executor = executor
        self.gate = Admission(workers, workers, _MAX_WAITING)

    async def run(self, hotkey: str, stake: float, deadline_s: float, fn: Callable[..., T], *args: object) -> T:
        return await _gated(self.gate, hotkey, stake, deadline_s, self.executor, fn, *args)


async def _gated(gate: Admission, hotkey: str, stake: float, deadline_s: float, executor: Executor,
                 fn: Callable[..., T], *args: object, on_cancel: Callable[[], None] | None = None) -> T:
    if not (gate.try_take(hotkey) or await gate.acquire(hotkey, stake, deadline_s, time.monotonic())):
        raise DecodeBusy("no decode slot free before the deadline")
    future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    future.add_done_callback(lambda _: gate.release(hotkey))  # when the thread is done, whoever waited
    try:
        return await asyncio.shield(future)  # a cut request stops waiting; the thread's work ends on its own
    except asyncio.CancelledError:
        if on_cancel is not None and not future.done():
            on_cancel()
        raise


class _Worker:
    """One worker process and its pipes, used by one pool thread at a time; `abandon` may come from the loop."""

    def __init__(self, limits: DecodeConfig, on_restart: Callable[[], None]) -> None:
        self._command = [sys.executable, "-m", "cascade.decode_worker", str(limits.isolated_nice),
                         limits.model_dump_json()]
        self._max_pixels = limits.max_pixels
        self._on_restart = on_restart
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._starting = threading.Lock()  # a pool thread and `prestart` may both find the process missing
        self._running: object | None = None  # the token of the decode now in the process
        self.abandoned = False
        self.closed = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def ensure_started(self) -> None:
        """A live process, ready for work: started (or restarted after a kill or a crash) here, in the pool thread."""
        with self._starting:
            self._ensure_started()

    def _ensure_started(self) -> None:
        if self.closed:
            raise RuntimeError("the decode workers are closed")
        if self._process is not None and self._process.poll() is None and not self.abandoned:
            return
        if self._process is not None:
            self._end()
            self._on_restart()
        self.abandoned = False
        process = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert process.stdout is not None
        if process.stdout.read(1) != READY:
            code = process.wait(10)
            raise RuntimeError(f"the decode worker process exited with code {code} before it was ready")
        self._process = process

    def decode(self, heavy: HeavyImage, token: object) -> Decoded:
        """The worker's answer for `heavy`; ConnectionError when the process ended meanwhile (killed or crashed)."""
        self.ensure_started()
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        with self._lock:
            self._running = token
        try:
            process.stdin.write(REQUEST.pack(len(heavy.data), heavy.min_side or 0) + heavy.data)
            process.stdin.flush()
            head = read_exactly(process.stdout, ANSWER.size)
            if head is None:
                raise ConnectionError("the decode worker process ended")
            kind, height, width, original_w, original_h, downscaled, length = ANSWER.unpack(head)
            if kind != PIXELS:
                message = read_exactly(process.stdout, min(length, 4096))
                raise DecodeError((message or b"image: refused").decode(errors="replace"))
            if length != height * width * 3 or height * width > self._max_pixels:
                self.abandoned = True  # not what a decode makes: never trust this process again
                raise ConnectionError(f"the decode worker answered {length} bytes for {width}x{height}")
            pixels = np.empty((height, width, 3), np.uint8)
            if not _read_into(process.stdout, pixels.data.cast("B")):
                raise ConnectionError("the decode worker process ended")
        except (BrokenPipeError, OSError) as exc:
            raise ConnectionError(f"the decode worker process ended ({exc})") from exc
        finally:
            with self._lock:
                self._running = None
        return Decoded(image=pixels, encoded=heavy.data, sha256=hash_bytes(heavy.data),
                       original_size=(original_w, original_h), downscaled=bool(downscaled))

    def abandon(self, token: object) -> bool:
        """Kill the process if it is still decoding `token` (the request's deadline came); True if it was."""
        with self._lock:
            if self._running is not token or self._process is None:
                return False
            self.abandoned = True
            self._process.kill()  # SIGKILL does not block; the pool thread reaps it and starts another
            return True

    def close(self) -> None:
        """End the process for good: one being started meanwhile is waited for and ended too."""
        self.closed = True
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.kill()
        with self._starting:
            self._end()

    def _end(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def _read_into(stream: IO[bytes], view: memoryview) -> bool:
    done = 0
    while done < len(view):
        count = stream.readinto(view[done:])  # type: ignore[attr-defined]
        if not count:
            return False
        done += count
    return True


class IsolatedDecoder:
    """Costly images decoded in killable worker processes, shared by caller (see the module)."""

    def __init__(self, limits: DecodeConfig, budget: MemoryBudget, outcome: Outcome | None = None) -> None:
        workers = limits.isolated_workers
        self.budget = budget
        self._outcome = outcome or (lambda _: None)
        self.gate = Admission(workers, limits.isolated_per_hotkey, _MAX_WAITING)
        self._idle = [_Worker(limits, lambda: self._outcome("restarted")) for _ in range(workers)]
        self._workers = list(self._idle)
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="decode-isolated")

    async def decode(self, heavy: HeavyImage, hotkey: str, stake: float, deadline_s: float) -> Decoded:
        """The pixels by the deadline, or: DecodeError (the image's fault), DecodeBusy (no worker or memory in time),
        CancelledError (the request's deadline: its worker is killed and replaced)."""
        worker = _Lease(self._idle)
        token = object()
        try:
            return await _gated(self.gate, hotkey, stake, deadline_s, self._threads, self._run, worker, heavy,
                                token, deadline_s, on_cancel=lambda: self._abandon(worker, token))
        except DecodeBusy:
            self._outcome("busy")
            raise

    def _abandon(self, lease: _Lease, token: object) -> None:
        if lease.worker is not None and lease.worker.abandon(token):
            self._outcome("abandoned")
            logger.info("decode worker {} killed at its request's deadline", lease.worker.pid)

    def _run(self, lease: _Lease, heavy: HeavyImage, token: object, deadline_s: float) -> Decoded:
        """Pool thread: memory, then the worker; a killed or crashed worker is replaced before its slot is free."""
        worker = lease.take()
        try:
            taken = self.budget.acquire(heavy.held_bytes, deadline_s)
            try:
                decoded = worker.decode(heavy, token)
            finally:
                self.budget.release(taken)
        except DecodeError:
            self._outcome("refused")
            raise
        except ConnectionError as exc:
            if worker.abandoned or worker.closed:
                raise DecodeBusy("the decode was abandoned at the deadline") from exc
            self._outcome("crashed")
            logger.warning("decode worker {} ended while decoding an image ({}): refused", worker.pid, exc)
            raise DecodeError("image: the decoder could not read this image") from exc
        finally:
            try:
                if not worker.closed:
                    worker.ensure_started()  # a killed or crashed process is replaced now, not by the next caller
            except Exception as exc:  # noqa: BLE001 - the next decode tries again; this one has its answer
                logger.error("decode worker could not be restarted: {}", exc)
            lease.give_back()
        self._outcome("decoded")
        return decoded

    def prestart(self) -> list[Future[None]]:
        """Start every worker process now, in the pool's threads (a decode arriving meanwhile waits its turn)."""
        return [self._threads.submit(worker.ensure_started) for worker in self._workers]

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None]

    def close(self) -> None:
        """Kill every worker process and wait for them; decodes still running fail (the engine is stopping)."""
        for worker in self._workers:
            worker.close()
        self._threads.shutdown(wait=True, cancel_futures=True)


class _Lease:
    """A worker taken from the idle list by the pool thread that runs the decode, and put back by it.

    The gate admits no more decodes than there are workers, and gives a slot back only when its thread is done,
    so an admitted decode always finds an idle worker.
    """

    def __init__(self, idle: list[_Worker]) -> None:
        self._idle = idle
        self.worker: _Worker | None = None

    def take(self) -> _Worker:
        self.worker = self._idle.pop()  # list.pop and append are atomic: the pool threads share the list
        return self.worker

    def give_back(self) -> None:
        if self.worker is not None:
            self._idle.append(self.worker)
