"""A replica that runs in a worker process of its own (`worker: process` in the expert's config).

Why: one Python process drives every GPU through one interpreter lock. Model calls, nvJPEG decoding
and tensor bookkeeping take that lock between CUDA launches, so a second GPU in the same process
mostly splits batches, and torchvision keeps a single nvJPEG decoder per process (docs/performance.md).
As Triton and Ray Serve do, each replica here gets its own process (and so its own interpreter lock,
CUDA context and nvJPEG decoder); the miner keeps everything that decides (admission, deadlines,
batching, exits), and sends a batch over a socket pair: the JPEGs' bytes and checked headers, or host
arrays. To the scheduler this is an asynchronous expert like a vLLM engine: several batches in flight.

Failures: a batch that fails in the worker fails its futures as in-process (an out-of-memory message
keeps its words, so the scheduler halves batches). A worker that dies, loses its CUDA context, or does
not answer a batch by its deadline and a grace (then it is killed) is restarted in the background
with a growing pause; meanwhile its batches are refused at once, the
replica's circuit breaker takes it out of service, and requests are answered by the other levels or
the prior, in time. The miner process is never ended for a worker's device error.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

import numpy as np
from loguru import logger

from cascade.config import DecodeConfig, ExpertConfig
from cascade.decode import DecodeError
from cascade.experts.base import WORKER_STAGES, Expert, ExpertError
from cascade.experts.worker_channel import Channel
from cascade.experts.worker_wire import FrameReader, frame, pack_item, unpack_answer

ANSWER_GRACE_S = 1.0  # past a batch's deadline (at least), its answer is given up on and the worker deemed hung
RESTART_PAUSES_S = (0.5, 2.0, 5.0, 15.0, 60.0)  # after the 1st, 2nd, ... failure in a row to come back
SOCKET_BUFFER_BYTES = 16 << 20  # asked for; the kernel grants what its limits allow


class WorkerExpert(Expert):
    """The miner's handle on a replica in a worker process (see the module docstring)."""

    is_async = True
    # One batch running and the next one sent: what arrives meanwhile waits in the miner's queue, where it is
    # ordered by deadline, dropped when expired and gathered into the following (larger) batch.
    batches_in_flight = 2

    def __init__(self, config: ExpertConfig, device: str, decode: DecodeConfig | None = None,
                 decode_device: str = "auto", switch_interval_s: float = 0.0005,
                 load_timeout_s: float = 1800.0, factory: Callable[[ExpertConfig, str], Expert] | None = None) -> None:
        super().__init__(config, device)
        # `factory` (None: the registry's build_expert) travels pickled, by reference: the worker imports it.
        _check_importable(self.replica, factory)
        self._spec = {"config": config.model_dump(mode="json"), "device": device,
                      "decode": (decode or DecodeConfig()).model_dump(mode="json"), "decode_device": decode_device,
                      "switch_interval_s": switch_interval_s, "factory": factory}
        self._load_timeout_s = load_timeout_s
        self._facts: dict[str, Any] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None  # connected, not yet attached to the loop
        self._channel: Channel | None = None
        self._starting: tuple[socket.socket, subprocess.Popen[bytes]] | None = None  # started, not yet ready
        self._attaching: asyncio.Task[Any] | None = None
        self._ids = itertools.count()
        self._closed = False
        self._down_reason = ""  # why the replica is not serving now ("" while it is)
        self._restarting: asyncio.Task[None] | None = None
        self._failures_in_a_row = 0
        self.restarts = 0  # fresh workers that came up after one ended
        self.exits = 0  # workers that ended (died, killed as hung, lost their device) or failed to start again
        self.busy_s = 0.0  # seconds the worker spent on answered batches: its rate is how busy the worker is
        self.stage_s = dict.fromkeys(WORKER_STAGES, 0.0)  # those seconds by stage, where the worker timed them
        self.batches = 0  # answered batches

    @property
    def replica(self) -> str:
        return self.label

    def down(self) -> str:
        return self._down_reason

    # -- facts the worker reported at load ------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def takes_jpeg(self) -> bool:
        return bool(self._facts.get("takes_jpeg"))

    def input_side(self) -> int | None:
        side = self._facts.get("input_side")
        return int(side) if side is not None else None

    def memory_bytes(self) -> int:
        return int(self._facts.get("memory_bytes", 0))

    def reported_preprocessing(self) -> str | None:
        """The input size and resize mode the worker's expert serves, as its own process described them."""
        described = self._facts.get("preprocessing")
        return str(described) if described else None

    def warmed_in_load(self) -> tuple[float, float] | None:
        warm = self._facts.get("warm")
        return (float(warm[0]), float(warm[1])) if warm else None

    # -- start and stop (any thread but the engine loop: they block) -------------------------------
    def start(self) -> None:
        """Start the worker and send it the replica's spec without waiting for it (`load` waits)."""
        if self._starting is None and self._process is None:
            self._starting = self._launch()

    def load(self) -> None:
        self.start()
        self._spawn()

    def _launch(self) -> tuple[socket.socket, subprocess.Popen[bytes]]:
        mine, theirs = socket.socketpair()
        # Room for a whole batch where the kernel allows (it caps these at net.core.wmem_max/rmem_max): fewer turns
        # of the writer thread, each of which waits for the interpreter lock.
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        # The environment as it is: the worker sets the offline switches itself before importing anything.
        process = subprocess.Popen([sys.executable, "-m", "cascade.experts.worker_main", str(theirs.fileno())],
                                   pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        theirs.close()
        assert process.stderr is not None
        threading.Thread(target=relay_log, args=(process.stderr, self.replica), name=f"log-{self.replica}",
                         daemon=True).start()
        try:
            mine.sendall(frame(("init", self._spec)))
        except BaseException:
            _abandon(mine, process)
            raise
        return mine, process

    def _spawn(self) -> None:
        """Wait for the started worker (starting one first if none is) to load, warm up and say "ready"."""
        mine, process = self._starting or self._launch()
        self._starting = None
        try:
            kind, facts = self._wait_ready(mine, process)
            if kind != "ready":
                raise ExpertError(f"{self.replica}: the worker process could not load the model: {facts}")
        except BaseException:
            _abandon(mine, process)
            raise
        mine.setblocking(False)
        self._facts, self._process, self._socket = facts, process, mine
        for note in facts.get("notes", []):
            logger.info("{}", note)
        logger.info("{}: worker process {} ready (load {:.2f}s, warm-up {:.2f}s)", self.replica, process.pid,
                    facts["load_s"], facts["warm"][0])

    def _wait_ready(self, sock: socket.socket, process: subprocess.Popen[bytes]) -> tuple[str, Any]:
        sock.settimeout(1.0)
        reader = FrameReader()
        began = time.monotonic()
        while time.monotonic() - began < self._load_timeout_s:
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not data:
                code = process.wait(10)
                raise ExpertError(f"{self.replica}: the worker process exited with code {code} before it was ready "
                                  "(its log lines above say why)")
            for message in reader.feed(data):
                return message[0], message[1]
        raise ExpertError(f"{self.replica}: the worker process was not ready within {self._load_timeout_s:.0f}s")

    def close(self) -> None:
        """End the worker (it would end with the socket anyway) and wait for it: no process outlives this."""
        self._closed = True
        channel, sock, process = self._channel, self._socket, self._process
        self._channel = self._socket = self._process = None
        if self._starting is not None:  # started, never waited for
            _abandon(*self._starting)
            self._starting = None
        if process is not None:
            _end(process)
        if channel is not None:
            channel.close()
        if sock is not None:
            sock.close()

    # -- batches (engine loop) ---------------------------------------------------------------------
    async def predict_async(self, images: Sequence[np.ndarray], deadline_s: float) -> list[float]:
        channel = await self._channel_now()
        loop = asyncio.get_running_loop()
        batch_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        channel.pending[batch_id] = future
        channel.send(("batch", batch_id, [pack_item(image) for image in images]))
        timeout_s = max(0.0, deadline_s - time.monotonic()) + self.grace_s()
        try:
            message = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            self._replace_hung(channel)
            raise ExpertError(f"{self.replica}: the worker did not answer a batch of {len(images)} "
                              f"within its deadline") from None
        finally:
            channel.pending.pop(batch_id, None)
        if message[0] == "error":
            self._raise_failure(message[2], message[3])
        self._failures_in_a_row = 0  # a worker that answers is healthy again: the next restart comes quickly
        self.busy_s += message[3]
        for stage, seconds in message[4].items():  # experts/base.py WORKER_STAGES
            if stage in self.stage_s:
                self.stage_s[stage] += seconds
        self.batches += 1
        answers: list[float | DecodeError] = [unpack_answer(v) for v in message[2]]
        return answers  # type: ignore[return-value]  # per-image DecodeError answers, as the Expert contract allows

    def _raise_failure(self, kind: str, text: str) -> NoReturn:
        if kind == "fatal":  # the worker ends itself; its restart keeps the miner serving
            logger.error("{}: the worker lost its device ({}); it is restarted", self.replica, text)
            # NOTE: not the original words: those would make the scheduler end the whole miner for a restart.
            raise ExpertError(f"{self.replica}: the worker process lost its device and is being restarted")
        raise ExpertError(f"{self.replica}: {text}")

    def grace_s(self) -> float:
        """How long past a batch's deadline its answer is waited for: it may queue behind the batch running in the
        worker, so a second, or three of this worker's mean batches where those are longer."""
        return max(ANSWER_GRACE_S, 3 * self.busy_s / self.batches) if self.batches else ANSWER_GRACE_S

    def _replace_hung(self, channel: Channel) -> None:
        """A batch past its deadline and the grace: the worker is stuck (a hung kernel, a deadlock) or far too
        slow to be of use. Kill it; its socket's end restarts it like any dead worker (`lost`)."""
        if channel is not self._channel or self._process is None or self._process.poll() is not None:
            return
        logger.error("{}: worker process {} did not answer a batch by its deadline; replacing it", self.replica,
                     self._process.pid)
        self._process.kill()  # not waited for here (the loop must not block): the restart reaps it

    async def on_loop(self) -> None:
        """Watch the worker's socket from the start: its end (the worker died while no batch was running) restarts it
        at once, instead of failing the first batch that comes along."""
        self._watch()

    def _watch(self) -> None:
        """On the loop: attach a new worker's socket (its end then restarts it), unless attached or attaching."""
        if not self._closed and self._channel is None and self._attaching is None and self._socket is not None:
            sock, self._socket = self._socket, None
            self._attaching = asyncio.get_running_loop().create_task(self._attach(sock))

    async def _channel_now(self) -> Channel:
        if self._closed:
            raise ExpertError(f"{self.replica} is shut down")
        self._watch()  # attached when its batcher started or its restart ended; else by this first batch
        if self._channel is None and self._attaching is not None:
            await asyncio.shield(self._attaching)
        if self._channel is None:
            raise ExpertError(f"{self.replica}: the worker process is restarting ({self._down_reason})")
        return self._channel

    async def _attach(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        channel = Channel(self, loop, sock)
        try:
            await loop.create_unix_connection(lambda: channel, sock=sock)
            self._channel = channel  # before this task is done: whoever waited on it finds the channel
        except Exception as exc:  # noqa: BLE001 - a socket the loop cannot take: a new worker, as for a dead one
            sock.close()
            self._begin_restart(f"its socket could not be attached: {exc!r}")
        finally:
            self._attaching = None

    def lost(self, channel: Channel, why: str) -> None:
        """The worker's socket ended: fail its batches and, unless closing, start a new worker."""
        channel.fail_pending(ExpertError(f"{self.replica}: the worker process ended ({why})"))
        if channel is not self._channel or self._closed:
            return
        self._channel = None
        self._begin_restart(why)

    def _begin_restart(self, why: str) -> None:
        self._failures_in_a_row += 1
        self.exits += 1
        process = self._process
        code = process.poll() if process is not None else None
        self._down_reason = f"exit code {code}" if code is not None else why
        logger.error("{}: worker process {} ended ({}); restarting it", self.replica, self.pid, self._down_reason)
        if self._restarting is None or self._restarting.done():
            self._restarting = asyncio.get_running_loop().create_task(self._restart(), name=f"restart-{self.replica}")

    def _pause_s(self) -> float:
        """The wait before the next start: longer after each failure in a row, then once a minute."""
        return RESTART_PAUSES_S[min(self._failures_in_a_row, len(RESTART_PAUSES_S)) - 1]

    async def _restart(self) -> None:
        old = self._process
        if old is not None:
            await asyncio.to_thread(_end, old)
        while not self._closed:
            await asyncio.sleep(self._pause_s())
            if self._closed:
                return
            try:
                await asyncio.to_thread(self._spawn)
            except Exception as exc:  # noqa: BLE001 - keep trying, slower; the replica stays out of service
                self._failures_in_a_row += 1
                self.exits += 1  # a crash loop shows here while `restarts` stands still
                self._down_reason = f"restart failed: {exc}"
                logger.error("{}: {}; next try in {:g}s", self.replica, self._down_reason, self._pause_s())
                continue
            if self._closed:  # closed while it started: end the new one too
                self.close()
                return
            self._down_reason = ""
            self.restarts += 1
            logger.info("{}: worker process restarted (pid {})", self.replica, self.pid)
            self._watch()  # at once, as at start-up: a death before the next batch restarts it too
            return


_LEVELS = frozenset({"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"})


def relay_log(stream: IO[bytes], replica: str) -> None:
    """A worker's stderr into the miner's log, line by line, until the worker ends (its own thread).

    The worker writes "LEVEL<tab>message"; anything else (a library writing to stderr directly) is logged at
    INFO as it is. A carriage-return progress line keeps its last state only.
    """
    for raw in iter(stream.readline, b""):
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        text = text.rsplit("\r", 1)[-1].strip()
        if not text:
            continue
        level, _, message = text.partition("\t")
        if level not in _LEVELS or not message:
            level, message = "INFO", text
        logger.log(level, "worker {} | {}", replica, message)
    stream.close()


def _check_importable(replica: str, factory: Any) -> None:
    """ExpertError unless the worker can import `factory` by name (pickle sends functions by reference)."""
    function = getattr(factory, "func", factory)  # a functools.partial's function
    try:
        pickle.dumps(factory)
        importable = getattr(function, "__module__", None) != "__main__"  # another process's __main__ is not ours
    except (pickle.PicklingError, AttributeError, TypeError):
        importable = False
    if not importable:
        raise ExpertError(f"{replica}: a worker process builds its replica with a factory it can import (a "
                          f"module-level function or a functools.partial of one, not in __main__), not {factory!r}")


def _abandon(sock: socket.socket, process: subprocess.Popen[bytes]) -> None:
    """A worker given up on before it served: its socket closed and the process ended."""
    sock.close()
    _end(process)


def _end(process: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """Terminate, wait, kill: the process is gone (and reaped) when this returns."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
