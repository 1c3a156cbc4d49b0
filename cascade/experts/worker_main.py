"""An expert replica in a process of its own: `python -m cascade.experts.worker_main FD` (started by the miner).

The miner's `WorkerExpert` (cascade/experts/worker.py) starts this with one end of a socket pair as FD,
sends the replica's spec, and waits for "ready". Here the replica is built through the same registry as
in the miner, loaded, given nvJPEG where its device allows (this process drives one device, so every
GPU gets a decoder of its own), warmed up, and then runs batches in the order they arrive.

Three threads: the reader takes frames off the socket, the main thread starts each batch (its device work queued),
and, when batches queue up, the answers thread waits for the started ones in order and sends their answers: the next
batch is unpickled, decoded and queued while the GPU runs the one before. An idle worker's single batch is finished
and answered by the main thread itself, as before. The process ends when the socket does: the miner closed it,
or died (the kernel closes its end), so a worker never outlives its miner. A lost CUDA context ends
this process after answering the batch with a "fatal" error: the miner starts a fresh one.
"""

from __future__ import annotations

import os

# Before anything imports transformers or ultralytics (the miner sets these too; a worker started by hand must not
# reach a model hub or pip either).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

import queue  # after the offline switches, on purpose
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from cascade.config import DecodeConfig, ExpertConfig
from cascade.device_errors import is_fatal_device_error, is_out_of_memory
from cascade.experts.base import Expert, check_probabilities, warm_up
from cascade.experts.worker_wire import FrameReader, frame, pack_answer, unpack_item

EXIT_SOCKET_CLOSED = 0
EXIT_LOAD_FAILED = 1
EXIT_DEVICE_LOST = 3
EXIT_STREAM_BROKEN = 4


def _read_forever(sock: socket.socket, reader: FrameReader, inbox: queue.Queue[Any]) -> None:
    """Reader thread: frames to `inbox`; the end of the socket ends the process at once (even mid-batch)."""
    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            os._exit(EXIT_SOCKET_CLOSED)
        try:
            for message in reader.feed(data):
                inbox.put(message)
        except ValueError as exc:  # a broken stream cannot be resynchronised: end, and the miner starts a new worker
            logger.error("{}", exc)
            os._exit(EXIT_STREAM_BROKEN)


def _first_message(sock: socket.socket, reader: FrameReader) -> Any:
    while True:
        data = sock.recv(1 << 20)
        if not data:
            sys.exit(EXIT_SOCKET_CLOSED)
        for message in reader.feed(data):
            return message


def _load(spec: dict[str, Any]) -> tuple[Expert, dict[str, Any]]:
    from cascade.experts.registry import build_expert

    sys.setswitchinterval(spec["switch_interval_s"])
    config = ExpertConfig.model_validate(spec["config"])
    expert = (spec["factory"] or build_expert)(config, spec["device"])
    t0 = time.monotonic()
    expert.load()
    notes = []
    if expert.decodes_jpeg and spec["decode_device"] != "off":
        from cascade.experts.jpeg import enable_device_jpeg

        note = enable_device_jpeg(expert, spec["decode_device"])
        if note:
            notes.append(note)
    load_s = time.monotonic() - t0
    warm = warm_up(expert)
    described = getattr(expert, "preprocessing", None)  # the input size and resize mode it serves, for the log
    facts = {"pid": os.getpid(), "takes_jpeg": expert.takes_jpeg(), "input_side": expert.input_side(),
             "memory_bytes": expert.memory_bytes(), "load_s": load_s, "warm": warm, "notes": notes,
             "preprocessing": described.describe() if described is not None else None}
    return expert, facts


@dataclass
class Started:
    """A batch whose device work is queued: `finish` waits for its answers; `failure` when starting it failed."""

    batch_id: int
    began: float
    finish: Callable[[], Sequence[Any]] | None = None
    failure: tuple[Any, bool] | None = None
    stages: dict[str, float] = field(default_factory=dict)  # seconds by stage while starting it (WORKER_STAGES)


def _failed(batch_id: int, exc: Exception) -> tuple[Any, bool]:
    """The message for a failed batch, and whether this process must end after sending it (device lost)."""
    fatal = is_fatal_device_error(exc)
    kind = "fatal" if fatal else "oom" if is_out_of_memory(exc) else "error"
    return ("error", batch_id, kind, f"{type(exc).__name__}: {exc}"), fatal


def _start(expert: Expert, batch_id: int, items: list[Any], limits: DecodeConfig) -> Started:
    began = time.monotonic()
    expert.stages = None  # set again by an expert that times its stages
    try:
        images = [unpack_item(item, limits) for item in items]
        unpacked = time.monotonic()
        finish = expert.start_batch(images)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - a failed batch is answered as failed; the miner decides what follows
        return Started(batch_id, began, failure=_failed(batch_id, exc))
    return Started(batch_id, began, lambda: check_probabilities(expert.name, finish(), len(images)),
                   stages={"unpack": unpacked - began, **(expert.stages or {})})


def _finish(started: Started, since: float = 0.0) -> tuple[Any, bool]:
    """The message for a started batch once its answers are in (the seconds it had the device to itself: from its start
    or the previous batch's answers, whichever came later), and whether this process must end after sending it."""
    if started.failure is not None or started.finish is None:
        return started.failure or _failed(started.batch_id, RuntimeError("a batch started without a way to finish"))
    waiting = time.monotonic()
    try:
        values = started.finish()
    except Exception as exc:  # noqa: BLE001 - as in _start
        return _failed(started.batch_id, exc)
    now = time.monotonic()
    stages = dict(started.stages)
    stages["wait"] = stages.get("wait", 0.0) + now - waiting  # the wait for the started work's answers
    return ("result", started.batch_id, [pack_answer(v) for v in values], now - max(started.began, since),
            stages), False


def _answer(expert: Expert, batch_id: int, items: list[Any], limits: DecodeConfig) -> tuple[Any, bool]:
    """One batch started and finished: the message for it, and whether this process must end after sending it."""
    return _finish(_start(expert, batch_id, items, limits))


class Answers:
    """Sends started batches' answers in the order they started. A batch with none before it still unanswered and none
    waiting behind it is finished by the thread that started it (an idle worker's batch-1 answer crosses no thread);
    any other is handed to the answers thread, which waits for it while the main thread starts the next batch."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.handed: queue.Queue[Started] = queue.Queue()
        self.lock = threading.Lock()
        self.outstanding = 0  # handed to the answers thread and not sent yet
        self.since = 0.0  # when the last answers were sent
        threading.Thread(target=self._answer_in_order, name="worker-answers", daemon=True).start()

    def send(self, started: Started, more_waiting: bool) -> None:
        with self.lock:
            inline = self.outstanding == 0 and not more_waiting
            if not inline:
                self.outstanding += 1
        if inline:  # the answers thread is idle: no send of its own can interleave with this one
            self._send(started)
        else:
            self.handed.put(started)

    def _answer_in_order(self) -> None:
        while True:
            self._send(self.handed.get())
            with self.lock:
                self.outstanding -= 1

    def _send(self, started: Started) -> None:
        message, fatal = _finish(started, self.since)
        self.since = time.monotonic()
        self.sock.sendall(frame(message))
        if fatal:
            logger.error("device lost ({}): ending this worker for a fresh one", message[3])
            os._exit(EXIT_DEVICE_LOST)


def serve(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader = FrameReader()
    kind, spec = _first_message(sock, reader)
    assert kind == "init", f"expected init, got {kind!r}"
    logger.remove()
    # The miner reads these lines from a pipe and logs them as its own (cascade/experts/worker.py `relay_log`):
    # its sinks, timestamps and file. Only the level and the message travel.
    logger.add(sys.stderr, level="DEBUG", format="{level}\t{message}", colorize=False)
    inbox: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_read_forever, args=(sock, reader, inbox), name="worker-reader", daemon=True).start()
    try:
        expert, facts = _load(spec)
    except Exception as exc:  # noqa: BLE001 - the miner reports it as this replica's load failure
        logger.error("could not load the model: {}: {}", type(exc).__name__, exc)
        sock.sendall(frame(("failed", f"{type(exc).__name__}: {exc}")))
        return EXIT_LOAD_FAILED
    limits = DecodeConfig.model_validate(spec["decode"])
    sock.sendall(frame(("ready", facts)))
    # The main thread starts each batch as it arrives (its decode, preprocessing and forward queued on the device).
    # With another batch already waiting (or one before still running) the answers thread waits for it, so the next
    # batch's host work overlaps this one's device work; the miner keeps at most two batches at a worker
    # (cascade/experts/worker.py). An idle worker finishes its one batch itself.
    answers = Answers(sock)
    while True:
        _, batch_id, items = inbox.get()
        started = _start(expert, batch_id, items, limits)
        answers.send(started, more_waiting=not inbox.empty())


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m cascade.experts.worker_main FD (started by the miner, not by hand)", file=sys.stderr)
        return 2
    return serve(int(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
