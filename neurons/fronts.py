"""The miner process's side of its front processes: start them, answer them, restart them, drain them.

With `axon.processes` N > 0 the axon's HTTP work (parsing, the guards' cheap checks, signature verification,
bodies, the answer's serialisation) runs in N front processes (neurons/front.py), so one process's interpreter lock
no longer holds the HTTP server, verification and the engine's loop at once. The scheduler, admission, batching and
the engine stay here, in one process; so do the nonce record, the rate limits, the response lag and every counter
(neurons/serving_core.py), so that what held with one process holds with N:
- a nonce is claimed here, once, whichever front saw it; a caller's token bucket is one bucket;
- each caller's address is handed to one front by the kernel (neurons/caller_routing.py), so its per-address
  caps are kept in one place; the totals (connections, request slots, body bytes) are split between fronts;
- deadlines count from the request's first byte, read by the front (CLOCK_MONOTONIC is one clock for all);
- one metrics endpoint: fronts send their counters and reports here, and their HTTP gauges every second;
- drain: the listeners close here, each front answers what it accepted (the engine still runs) and exits;
- a front that dies is restarted (its socket, held here, keeps its callers' new connections waiting meanwhile),
  and the requests it had admitted and not reported are counted, `closed_front_died`;
- no orphans: a front exits when its link closes and is killed by the kernel if this process dies.
One thread per front reads its link; the engine's answers are sent from the engine's own thread, those of one turn
of its loop (a batch) in one write per front.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge

from neurons import front_link as link
from neurons.chain import MetagraphSnapshot
from neurons.config import MinerConfig
from neurons.http_limits import HttpLimits

_SEND_TIMEOUT_S = 2.0  # a front that reads nothing for this long is stuck: its answers are dropped, not waited on
_RESTART_DELAY_S = 1.0  # after a quick death (within _STABLE_S of its start); doubled each time, up to _RESTART_MAX_S
_STABLE_S = 10.0
_RESTART_MAX_S = 30.0


def front_limits(limits: HttpLimits, fronts: int, index: int = 0) -> HttpLimits:
    """Front `index`'s share: the totals divided (request slots that do not divide evenly go one each to the first
    fronts, so the fronts' slots add up to the total set); the per-address caps as configured (a caller's address is
    one front's), except that one address never holds more than half of its front's request slots: the share it was
    given of the whole (half of it by default) would otherwise be all of one front's, and every other caller of
    that front would wait behind it (the outside test of 5 December)."""
    whole, left = divmod(limits.max_concurrent_requests, fronts)
    slots = max(1, whole + (1 if index < left else 0))
    per_ip_slots = limits.max_concurrent_requests_per_ip or max(1, limits.max_concurrent_requests // 2)
    return dataclasses.replace(
        limits,
        max_connections=max(1, limits.max_connections // fronts),
        max_concurrent_requests=slots,
        max_concurrent_requests_per_ip=min(per_ip_slots, max(1, slots // 2)),
        body_budget_bytes=limits.bodies_in_flight_bytes // fronts,  # never below two bodies of the largest size
    )


def too_few_request_slots(limits: HttpLimits, fronts: int) -> str | None:
    """The start-up error when an explicit `axon.max_concurrent_requests` leaves a front fewer than two slots: one
    address could then hold all of its front's (half of one slot is none), and a total below the fronts' count
    would be raised to one a front, more than was set (the outside test of 6 December)."""
    if fronts < 1 or limits.max_concurrent_requests >= 2 * fronts:
        return None
    return (f"axon.max_concurrent_requests {limits.max_concurrent_requests} leaves fewer than 2 request slots to "
            f"each of {fronts} front process{'es' if fronts != 1 else ''}: set it to at least {2 * fronts}, or fewer "
            "axon.processes")


def describe_request_slots(limits: HttpLimits, fronts: int) -> str:
    """The start-up line (and `--check`'s) that says how many requests the HTTP layer lets in at once."""
    if fronts < 1:
        return (f"{limits.max_concurrent_requests} in all, one address at most {limits.requests_per_ip} "
                "(the rest wait their turn)")
    shares = [front_limits(limits, fronts, index) for index in range(fronts)]
    per_front = sorted({share.max_concurrent_requests for share in shares}, reverse=True)
    per_address = sorted({share.requests_per_ip for share in shares}, reverse=True)  # a front's own half
    return (f"{sum(share.max_concurrent_requests for share in shares)} in all, {' or '.join(map(str, per_front))} a "
            f"front x {fronts}, one address at most {' or '.join(map(str, per_address))} (the rest wait their turn)")


def lowered_per_address_slots(limits: HttpLimits, fronts: int) -> str | None:
    """The start-up line when an explicit `axon.max_concurrent_requests_per_ip` is more than a front may give one
    address (half of its slots) and is lowered: an operator who set it must not find it silently changed."""
    configured = limits.max_concurrent_requests_per_ip
    share = front_limits(limits, fronts, fronts - 1)  # the smallest (uneven totals give the first fronts one more)
    if not configured or share.requests_per_ip >= configured:
        return None
    uneven = " (or one more)" if limits.max_concurrent_requests % fronts else ""
    return (f"axon.max_concurrent_requests_per_ip {configured} is lowered to {share.requests_per_ip} with {fronts} "
            f"front processes: a caller's address reaches one front, which has {share.max_concurrent_requests}{uneven} "
            f"of the {limits.max_concurrent_requests} request slots, and one address may hold at most half of them")


@dataclass(eq=False)
class _Front:
    index: int
    listener: socket.socket
    process: subprocess.Popen[bytes] | None = None
    link: socket.socket | None = None
    arena: Any = None
    view: memoryview | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    backlog: list[bytes] = field(default_factory=list)  # frames the socket had no room for, oldest first
    outbox: list[tuple[Any, ...]] = field(default_factory=list)  # answers of this engine-loop turn, not sent yet
    outbox_link: socket.socket | None = None  # the link they are for (a front restarted meanwhile gets none)
    backlog_ready: threading.Condition | None = None
    jobs: dict[int, Any] = field(default_factory=dict)  # job id -> job, until answered
    stats: tuple[int, int, int] = (0, 0, 0)  # active, waiting, connections
    process_figures: tuple[int, float, int] = (0, 0.0, 0)  # resident bytes, CPU seconds, open descriptors
    serving: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)
    started_s: float = 0.0
    restart_delay_s: float = 0.0
    restarts: int = 0  # times it ended while the miner served (counted as it ends, before the restart)


class Fronts:
    """N front processes on the axon's port. `start` (503 until `open`), `open` (serve the core), `stop` (drain)."""

    def __init__(self, config: MinerConfig, limits: HttpLimits, listeners: list[socket.socket], outcomes: Any,
                 started_ns: int, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self._limits = limits  # the whole; `_spawn` gives each front its share
        if (lowered := lowered_per_address_slots(limits, len(listeners))) is not None:
            logger.warning(lowered)
        self.outcomes = outcomes
        self.started_ns = started_ns
        self.core: Any = None
        self.snapshot = MetagraphSnapshot(config.chain.netuid)
        self._fronts = [_Front(index, sock) for index, sock in enumerate(listeners)]
        self._stopping = False
        self._lock = threading.Lock()
        # Every front is started from this one thread, alive as long as the process: the kernel's parent-death
        # signal (neurons/front.py) follows the thread that started a child, not the process.
        self._spawns: queue.Queue[tuple[_Front, Future[None]]] = queue.Queue()
        threading.Thread(target=self._spawner, name="front-spawner", daemon=True).start()
        registry = registry if registry is not None else CollectorRegistry()
        self._restarts = Counter("sn72_miner_front_restarts", "Front processes restarted after they died",
                                 registry=registry)
        alive = Gauge("sn72_miner_fronts", "Front processes serving the axon", ["state"], registry=registry)
        alive.labels("alive").set_function(lambda: sum(1 for f in self._fronts if _alive(f)))
        alive.labels("configured").set(len(self._fronts))
        connections = Gauge("sn72_miner_http_connections", "Open connections at the HTTP layer", registry=registry)
        connections.set_function(lambda: sum(f.stats[2] for f in self._fronts))
        # The process_* series are this process's; each front's own, as it last reported them (every second).
        for name, what, index in (("resident_memory_bytes", "Resident memory of each front process", 0),
                                  ("cpu_seconds", "CPU seconds of each front process since it started", 1),
                                  ("open_fds", "Open file descriptors of each front process", 2)):
            gauge = Gauge(f"sn72_miner_front_{name}", what, ["front"], registry=registry)
            for front in self._fronts:
                gauge.labels(str(front.index)).set_function(partial(_figure, front, index))

    # -- the HTTP layer's gauges, summed (AxonOutcomes.track_http reads these) -------------------
    @property
    def active(self) -> int:
        return sum(front.stats[0] for front in self._fronts)

    @property
    def waiting(self) -> int:
        return sum(front.stats[1] for front in self._fronts)

    def pids(self) -> list[int]:
        return [front.process.pid for front in self._fronts if front.process is not None and _alive(front)]

    def state(self) -> list[dict[str, Any]]:
        """Each front for `/status` (any thread): its pid, whether it serves, its restarts and open connections."""
        return [{"front": front.index, "pid": front.process.pid if front.process is not None else None,
                 "serving": _alive(front), "restarts": front.restarts, "connections": front.stats[2]}
                for front in self._fronts]

    def describe(self) -> str:
        return ", ".join(f"front {front.index} pid {front.process.pid}" for front in self._fronts
                         if front.process is not None)

    # -- life -----------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> Fronts:
        """Start every front; returns once each listens (answering 503 until `open`)."""
        for front in self._fronts:
            self._spawn_soon(front).result()
        self._wait(lambda f: f.serving, timeout_s, "listening")
        return self

    def open(self, core: Any, metagraph: Any, timeout_s: float = 30.0) -> None:
        """Serve `core` from now on (and keep the fronts' metagraph current); returns once every front serves."""
        self.core = core
        metagraph.subscribe(self._new_snapshot)
        for front in self._fronts:
            self._send(front, (link.OPEN, core.prior))
        self._wait(lambda f: f.opened, timeout_s, "serving")

    def stop(self, timeout_s: float) -> bool:
        """Drain: no new connections; each front answers what it accepted and exits. True when all did in time."""
        with self._lock:
            self._stopping = True
        draining = []
        for front in self._fronts:
            front.listener.close()  # the fronts' copies close as they shut down: then the port refuses
            if front.process is not None and front.process.poll() is None:
                front.process.send_signal(signal.SIGTERM)
                draining.append(front)
            else:  # died and not restarted yet: the connections waiting for it are reset as the socket closes
                logger.warning("front {} was down when the stop came: connections waiting for it are reset",
                               front.index)
        # uvicorn's own graceful timeout is the drain timeout (rounded up to a second): a front still there a second
        # later is stuck (stopped, or its loop blocked), and is killed.
        until_s = time.monotonic() + max(1.0, round(timeout_s)) + 1.0
        clean = True
        for front in draining:
            assert front.process is not None
            try:
                code = front.process.wait(max(0.0, until_s - time.monotonic()))
                clean &= code in (0, -signal.SIGTERM, -signal.SIGINT)
            except subprocess.TimeoutExpired:
                logger.warning("front {} (pid {}) did not finish draining in time: killed (drain incomplete: a front "
                               "process had to be killed, and the requests it held are counted closed_front_died)",
                               front.index, front.process.pid)
                front.process.kill()
                front.process.wait()
                clean = False
        return clean

    # -- spawning -------------------------------------------------------------------------------
    def _spawner(self) -> None:
        while True:
            front, done = self._spawns.get()
            try:
                self._spawn(front)
                done.set_result(None)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever asked
                done.set_exception(exc)

    def _spawn_soon(self, front: _Front) -> Future[None]:
        done: Future[None] = Future()
        self._spawns.put((front, done))
        return done

    def _spawn(self, front: _Front) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(_SEND_TIMEOUT_S), 0))
        share = front_limits(self._limits, len(self._fronts), front.index)
        arena_fd = link.new_arena(share.bodies_in_flight_bytes)
        arena = link.map_arena(arena_fd, share.bodies_in_flight_bytes)
        fds = (theirs.fileno(), front.listener.fileno(), arena_fd)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "neurons.front", *map(str, fds), self.config.axon.event_loop],
                pass_fds=fds, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
            os.close(arena_fd)
        with front.send_lock:
            front.process, front.link, front.arena, front.view = process, ours, arena, memoryview(arena)
            front.backlog.clear()
            if front.backlog_ready is not None:
                front.backlog_ready.notify_all()  # the old sending thread ends
                front.backlog_ready = None
        front.serving.clear()
        front.opened.clear()
        front.stats, front.started_s = (0, 0, 0), time.monotonic()
        self._send(front, (link.HELLO, self.config.model_dump(mode="json"), front.index, share,
                           share.bodies_in_flight_bytes, self.started_ns, self.snapshot))
        threading.Thread(target=self._follow, args=(front, ours), name=f"front-{front.index}", daemon=True).start()

    def _wait(self, event: Any, timeout_s: float, what: str) -> None:
        until_s = time.monotonic() + timeout_s
        for front in self._fronts:
            while not event(front).wait(0.1):
                if front.process is not None and front.process.poll() is not None:
                    raise RuntimeError(f"front process {front.index} exited ({front.process.returncode}) before "
                                       f"{what}: its lines above say why")
                if time.monotonic() > until_s:
                    raise RuntimeError(f"front process {front.index} was not {what} within {timeout_s:.0f} s")

    def _send(self, front: _Front, message: tuple[Any, ...]) -> None:
        self._send_data(front, link.frame(message))

    def _send_soon(self, front: _Front, message: tuple[Any, ...]) -> None:
        """On the engine's loop: the answers of one turn (a batch's) go to their front in one write, as a front's own
        frames do (neurons/front.py); elsewhere at once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send(front, message)
            return
        if front.outbox_link is not front.link:
            front.outbox, front.outbox_link = [], front.link
        front.outbox.append(message)
        if len(front.outbox) == 1:
            loop.call_soon(self._flush_outbox, front)

    def _flush_outbox(self, front: _Front) -> None:
        messages, front.outbox = front.outbox, []
        if messages and front.outbox_link is front.link:  # not for a front restarted since: its requests are lost
            self._send_data(front, b"".join(link.frame(message) for message in messages))

    def _send_data(self, front: _Front, data: bytes) -> None:
        """Never blocks its caller (answers are sent from the engine's own thread): what the socket has no room for
        now goes to the front's sending thread, and everything after it too, in order."""
        with front.send_lock:
            sock = front.link
            if sock is None:
                return
            if not front.backlog:
                try:
                    sent = sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return  # the front is gone: its reader thread notices and restarts it
                if sent == len(data):
                    return
                data = data[sent:]
            front.backlog.append(data)
            if front.backlog_ready is None:
                front.backlog_ready = threading.Condition(front.send_lock)
                threading.Thread(target=self._send_backlog, args=(front, sock), name=f"front-{front.index}-send",
                                 daemon=True).start()
            front.backlog_ready.notify()

    def _send_backlog(self, front: _Front, sock: socket.socket) -> None:
        """The front's sending thread, started the first time its socket was full: writes the backlog, blocking
        (at most _SEND_TIMEOUT_S per write: a front that reads nothing that long is stuck, and its link is closed)."""
        assert front.backlog_ready is not None
        while True:
            with front.send_lock:
                while not front.backlog and front.link is sock:
                    front.backlog_ready.wait()
                if front.link is not sock:
                    return  # restarted: a new socket, a new thread when it needs one
                data = b"".join(front.backlog)
                front.backlog.clear()
            try:
                sock.sendall(data)
            except OSError:
                logger.error("front {}: its link took nothing for {:.0f} s; closing it", front.index, _SEND_TIMEOUT_S)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # its reader thread sees the end and restarts the front
                return

    def _new_snapshot(self, snapshot: MetagraphSnapshot) -> None:
        self.snapshot = snapshot
        for front in self._fronts:
            self._send(front, (link.SNAPSHOT, snapshot))

    # -- one front's link -----------------------------------------------------------------------
    def _follow(self, front: _Front, sock: socket.socket) -> None:
        reader = link.BlockingReader(sock)
        try:
            while True:
                self._handle(front, reader.read())
        except (link.LinkClosed, OSError):
            pass
        except Exception as exc:  # noqa: BLE001 - a message this side cannot handle ends the front, not the miner
            logger.opt(exception=exc).error("front {}: link failed: {!r}", front.index, exc)
        finally:
            sock.close()
            self._gone(front)

    def _handle(self, front: _Front, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == link.JOB:
            self._job(front, *message[1:])
        elif kind == link.ADMIT:
            _, request_id, signer, uuid, nonce, hotkey = message
            refusal, limited = self.core.claim(signer, uuid, nonce, hotkey)
            self._send(front, (link.ADMITTED, request_id, refusal, limited))
        elif kind == link.REPORT:
            state = message[1]
            if state.outcome:
                self.outcomes.add(state.outcome)
            if self.core is not None:
                self.core.on_response(state)
        elif kind == link.OUTCOME:
            self.outcomes.add(message[1], message[2])
        elif kind == link.STATS:
            front.stats, front.process_figures = message[1:4], message[4:7]
        elif kind == link.SERVING:
            front.serving.set()
        elif kind == link.OPENED:
            front.opened.set()

    def _job(self, front: _Front, request_id: int, hotkey: str, stake: float, arrival_s: float,
             client_deadline_s: float, testnet_label: int, held: tuple[int, int] | None, inline: str | None) -> None:
        if inline is None:
            assert held is not None and front.view is not None
            start, length = held
            payload = str(front.view[start:start + length], "ascii")  # the one copy: arena -> the engine's str
        else:
            payload = inline
        job = self.core.job(payload, hotkey, stake, arrival_s, client_deadline_s, testnet_label)
        front.jobs[request_id] = job
        self.core.submit(job).add_done_callback(partial(self._answered, front, request_id, job))

    def _answered(self, front: _Front, request_id: int, job: Any, done: Future[Any]) -> None:
        reply = self.core.reply(job, done)
        # Not if its front died meanwhile: a restarted front numbers its requests from 1 again, so the entry must be
        # this very job, not a newer request of the same number. Counted from the front's report, once the answer
        # has left (a front that dies first has it counted as lost instead).
        if front.jobs.get(request_id) is job:
            del front.jobs[request_id]
            self._send_soon(front, (link.ANSWER, request_id, *reply))

    def _gone(self, front: _Front) -> None:
        process = front.process
        code = None
        if process is not None:
            try:
                code = process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()  # its link closed but it lives on: it cannot serve without one
                code = process.wait()
        lost = 0
        front.jobs.clear()
        if front.view is not None:
            arrived, finished = link.ARRIVALS.unpack_from(front.arena, 0)
            lost = max(0, arrived - finished)
            front.view.release()
            front.arena.close()
            front.view = front.arena = None
        with self._lock:
            if self._stopping:
                return
        if lost:
            self.outcomes.add("closed_front_died", lost)
        # At once the first time; after a death within _STABLE_S of its start, 1 s, then doubling up to 30 s.
        quick = time.monotonic() - front.started_s < _STABLE_S
        front.restart_delay_s = (min(_RESTART_MAX_S, max(_RESTART_DELAY_S, front.restart_delay_s * 2)) if quick
                                 else 0.0)
        drained = code in (0, -signal.SIGTERM, -signal.SIGINT)
        (logger.warning if drained else logger.error)(
            "front {} (pid {}) {} (exit {}); requests it had taken in and lost: {}; restarting it{}", front.index,
            process.pid if process else "?", "drained and stopped on a signal of its own" if drained else "died",
            code, lost, f" in {front.restart_delay_s:.0f} s" if front.restart_delay_s else "")
        self._restarts.inc()
        front.restarts += 1
        timer = threading.Timer(front.restart_delay_s, self._restart, args=(front,))
        timer.daemon = True
        timer.start()

    def _restart(self, front: _Front) -> None:
        with self._lock:
            if self._stopping:
                return
        try:
            self._spawn_soon(front).result()
        except OSError as exc:
            logger.error("front process {} could not be restarted: {!r}", front.index, exc)
            return
        process = front.process
        pid = process.pid if process is not None else "?"
        if self.core is None:
            logger.info("front {} restarted (pid {}); it serves once the miner is ready", front.index, pid)
            return
        self._send(front, (link.OPEN, self.core.prior))
        # An operator who read "died ... restarting it" learns when its callers are served again, and by which pid.
        if front.opened.wait(_RESTART_MAX_S):
            logger.info("front {} serves again (pid {})", front.index, pid)
        elif front.process is process and process is not None and process.poll() is None:  # not dead again
            logger.warning("front {} was restarted (pid {}) but does not serve yet after {:.0f} s", front.index, pid,
                           _RESTART_MAX_S)


def _alive(front: _Front) -> bool:
    return front.process is not None and front.process.poll() is None and front.serving.is_set()


def _figure(front: _Front, index: int) -> float:
    return float(front.process_figures[index]) if _alive(front) else 0.0
