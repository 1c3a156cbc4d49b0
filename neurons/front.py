"""A front process: the axon's HTTP server, guards, signature checks and bodies, beside the miner process.

Started by the miner process (neurons/fronts.py) as `python -m neurons.front LINK LISTENER ARENA` with three
inherited descriptors: its end of the link, its listening socket (one of the port's SO_REUSEPORT group, which
hands it every connection of its callers' addresses) and its payload arena. It serves 503 "not ready" from the
moment it listens until the miner process says OPEN, as the miner itself does while its models load.

Everything that must hold across fronts is asked of the miner process over the link (neurons/serving_core.py):
the nonce claim and the caller's rate limit (in the verify step, before the body is read, as before), the
engine's answer, and every response's report and counter. The front exits when the link closes (the miner
process is gone: nothing can be answered), on SIGTERM or SIGINT after answering what it accepted, and on its
parent's death (PR_SET_PDEATHSIG): no front outlives its miner.
"""
# ruff: noqa: E402 - the offline switches must be set before bittensor is imported (as in neurons/miner.py)

import os

for _name, _value in (("YOLO_OFFLINE", "1"), ("YOLO_AUTOINSTALL", "false"), ("HF_HUB_OFFLINE", "1"),
                      ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ[_name] = _value

import asyncio
import contextlib
import ctypes
import itertools
import resource
import signal
import socket
import sys
import time
from typing import Any

from loguru import logger

from neurons import front_link as link
from neurons.chain import MetagraphSnapshot
from neurons.config import MinerConfig
from neurons.serving_core import ANSWER_GRACE_S, Reply

_STATS_INTERVAL_S = 1.0
_ADMIT_TIMEOUT_S = 5.0  # the miner process answers a claim in microseconds; past this it is stuck: refuse


class Link:
    """The front's end of the link, on its event loop: requests with replies by id, and one-way messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, arena: Any, size: int) -> None:
        self._reader = reader
        self._writer = writer
        self.arena = arena
        self.space = link.ArenaSpace(size, link.ARENA_HEADER)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._held: dict[int, tuple[int, int]] = {}  # job id -> arena extent, given back with its answer
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def send(self, *message: Any) -> None:
        """Queued, and written with whatever else this turn of the event loop sends: one system call (and one wake-up
        of the miner process's reader) for many frames under load; a frame was 18% of a front's interpreter time,
        most of it the write itself (py-spy --gil, 2-core box, 16 callers)."""
        if self._writer.is_closing():
            return
        self._pending.append(link.frame(message))
        if len(self._pending) == 1:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued now (also before the front's last drain, which may not give the loop a turn)."""
        frames, self._pending = self._pending, []
        if frames and not self._writer.is_closing():
            self._writer.write(frames[0] if len(frames) == 1 else b"".join(frames))

    async def ask(self, kind: str, *fields: Any, held: tuple[int, int] | None = None) -> asyncio.Future[Any]:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        if held is not None:
            self._held[request_id] = held
        self.send(kind, request_id, *fields)
        return future

    def replied(self, request_id: int, value: Any) -> None:
        held = self._held.pop(request_id, None)
        if held is not None:
            self.space.give_back(*held)
        future = self._waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(value)

    def forget(self, request_id: int) -> None:
        """A request that stopped waiting (its own timeout): its late reply still gives its arena space back."""
        self._waiting.pop(request_id, None)

    async def next_message(self) -> tuple[Any, ...]:
        header = await self._reader.readexactly(link.HEADER.size)
        (length,) = link.HEADER.unpack(header)
        import pickle

        message: tuple[Any, ...] = pickle.loads(await self._reader.readexactly(length))
        return message


class RemoteOutcomes:
    """The miner process's counters, added to over the link."""

    def __init__(self, channel: Link) -> None:
        self._link = channel

    def add(self, outcome: str, count: int = 1) -> None:
        self._link.send(link.OUTCOME, outcome, count)


class RemoteCore:
    """`ServingCore`'s calls, asked of the miner process (the handlers in neurons/miner.py call either)."""

    engine = None
    response_lag = None

    def __init__(self, channel: Link, config: MinerConfig) -> None:
        self._link = channel
        self._margin_s = config.deadline.margin_s
        self.outcomes = RemoteOutcomes(channel)
        self.prior = 0.5  # the cascade's, sent with OPEN

    async def admit(self, signer: str, uuid: str | None, nonce: int, hotkey: str) -> tuple[str | None, bool]:
        future = await self._link.ask(link.ADMIT, signer, uuid, nonce, hotkey)
        try:
            refusal, limited = await asyncio.wait_for(future, _ADMIT_TIMEOUT_S)
        except TimeoutError:
            return "the miner did not answer the nonce claim in time", False
        return refusal, limited

    async def answer(self, payload: str, hotkey: str, stake: float, arrival_s: float, client_deadline_s: float,
                     testnet_label: int) -> Reply | None:
        held, inline = self._place(payload)
        fields = (hotkey, stake, arrival_s, client_deadline_s, testnet_label, held, inline)
        future = await self._link.ask(link.JOB, *fields, held=held)
        # The miner process's engine answers by the job's deadline (the caller's, less at least margin_s).
        wait_s = max(0.0, client_deadline_s - self._margin_s - time.monotonic()) + ANSWER_GRACE_S
        done, _ = await asyncio.wait({future}, timeout=wait_s)
        if not done:
            logger.error("the miner process did not answer a request by its deadline; answering from the prior")
            return None
        return Reply(*future.result())

    def _place(self, payload: str) -> tuple[tuple[int, int] | None, str | None]:
        """The payload in the arena ((offset, length), None), or inline (None, payload) when it does not fit or is
        not ASCII (the engine refuses it then, as it would have)."""
        try:
            data = payload.encode("ascii")
        except UnicodeEncodeError:
            return None, payload
        start = self._link.space.take(len(data))
        if start is None:
            return None, payload
        self._link.arena[start:start + len(data)] = data
        return (start, len(data)), None

    def on_response(self, state: Any) -> None:
        self._link.send(link.REPORT, state)


class SnapshotHolder:
    """The metagraph as the miner process last sent it (the guards read `.snapshot`)."""

    def __init__(self, snapshot: MetagraphSnapshot) -> None:
        self.snapshot = snapshot


def _process_figures() -> tuple[int, float, int]:
    """This process's resident bytes, CPU seconds and open descriptors (the miner process publishes them)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        rss, fds = usage.ru_maxrss * 1024, 0
    return rss, usage.ru_utime + usage.ru_stime, fds


def _die_with_parent() -> None:
    """SIGKILL this process when the miner process dies, however it dies (PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the closed link still ends the front


async def _serve(link_sock: socket.socket, listener: socket.socket, arena_fd: int) -> int:
    from neurons.http_guard import CLIENT_GONE, RequestState
    from neurons.miner import Miner, new_axon
    from neurons.server import AxonServer

    reader, writer = await asyncio.open_unix_connection(sock=link_sock)
    hello = await Link(reader, writer, None, 0).next_message()
    assert hello[0] == link.HELLO, hello
    _, config_data, index, limits, arena_size, started_ns, snapshot = hello
    config = MinerConfig.model_validate(config_data)
    _configure_logs(config, index)
    channel = Link(reader, writer, link.map_arena(arena_fd, arena_size), arena_size)
    core = RemoteCore(channel, config)

    def count(state: RequestState) -> None:
        outcome = state.violation[2] if state.violation else "closed_client_gone" if state.status == CLIENT_GONE \
            else f"error_{state.status}"
        core.outcomes.add(outcome)

    server = AxonServer(limits, config.axon.keep_alive_s, config.axon.max_header_bytes, config.drain_timeout_s,
                        lambda reason: core.outcomes.add(f"closed_{reason}"), count, config.axon.host,
                        config.axon.port, sock=listener)
    from neurons.startup import open_wallet

    wallet, _ = open_wallet(config)
    axon = new_axon(config, wallet)
    holder = SnapshotHolder(snapshot)
    miner = Miner(config, None, holder, core=core, started_ns=started_ns)  # type: ignore[arg-type]
    miner.attach(axon)

    async def follow() -> None:
        while True:
            try:
                message = await channel.next_message()
            except (asyncio.IncompleteReadError, ConnectionError):
                logger.warning("front {}: the miner process is gone; exiting", index)
                os._exit(0)  # nothing here can answer without it
            kind = message[0]
            if kind == link.ADMITTED or kind == link.ANSWER:
                channel.replied(message[1], message[2:])
            elif kind == link.SNAPSHOT:
                holder.snapshot = message[1]
            elif kind == link.OPEN:
                core.prior = message[1]
                server.open(axon, miner.on_response, config.axon.dispatch)
                channel.send(link.OPENED)

    async def report() -> None:
        while True:
            guard = server.guard
            channel.send(link.STATS, guard.active, guard.waiting, server.connections(), *_process_figures())
            await asyncio.sleep(_STATS_INTERVAL_S)

    # Every request taken in once serving and every one over, counted where the miner process can read them if this
    # process dies.
    arrived = finished = 0
    guard = server.guard

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        nonlocal arrived, finished
        if scope["type"] != "http" or guard.app is None:
            await guard(scope, receive, send)
            return
        arrived += 1
        link.ARRIVALS.pack_into(channel.arena, 0, arrived, finished)
        try:
            await guard(scope, receive, send)
        finally:
            finished += 1
            link.ARRIVALS.pack_into(channel.arena, 0, arrived, finished)

    server.server.config.app = counted

    tasks = [asyncio.create_task(follow()), asyncio.create_task(report())]

    async def announce() -> None:
        while not server.server.started:
            await asyncio.sleep(0.01)
        channel.send(link.SERVING, os.getpid())

    tasks.append(asyncio.create_task(announce()))
    # SIGTERM or SIGINT: answer what was accepted, then return. uvicorn's own handlers would raise the signal again
    # once it is done, ending the process before the last reports reach the miner process: ours only ask it to stop.
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, lambda: setattr(server.server, "should_exit", True))
    server.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    await server.server.serve(sockets=[listener])
    for task in tasks:
        task.cancel()
    channel.flush()
    await writer.drain()
    return 0


def _configure_logs(config: MinerConfig, index: int) -> None:
    """Lines on stderr (pm2 keeps them with the miner's), marked with the front; the miner process writes the files."""
    from neurons.logs import quiet_progress_bars, route_standard_logging
    from neurons.outcomes import quiet_bittensor_request_logs

    quiet_progress_bars()
    logger.remove()
    logger.add(sys.stderr, level=config.log_level,
               format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | front " + str(index) + " | {message}")
    route_standard_logging()  # bittensor's lines too, once, marked with the front
    quiet_bittensor_request_logs()


def main() -> None:
    _die_with_parent()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload is the miner process's (a SIGHUP to the group is not ours)
    link_fd, listener_fd, arena_fd = (int(arg) for arg in sys.argv[1:4])  # then the event loop's kind
    if os.getppid() == 1:
        sys.exit(0)  # the miner process died before PR_SET_PDEATHSIG was set
    link_sock = socket.socket(fileno=link_fd)
    listener = socket.socket(fileno=listener_fd)
    from cascade.event_loop import new_event_loop

    kind = sys.argv[4] if len(sys.argv) > 4 else "uvloop"
    with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:  # type: ignore[arg-type]
        sys.exit(runner.run(_serve(link_sock, listener, arena_fd)))


if __name__ == "__main__":
    main()
