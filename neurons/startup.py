"""The miner's start-up steps before any model loads, each failing in one line with its exit code.

Order (neurons/miner.py runs them): config -> log sinks -> the miner's own listeners (axon and
metrics ports, bound here: a port held by another process is an error, never a false READY) ->
wallet -> metagraph -> models present -> placement -> load -> warm-up -> READY. `--check` runs
every step up to placement and prints one line per step (`check`). Ports held by the miner already running for
the same config are no problem for `--check` (checking changed files before `sn72-miner reload` is what it is
for); the placement is then only a note, as the running miner's models fill the devices it counts.

Exit codes: 2 for configuration an operator must fix (pm2's `stop_exit_codes`: not restarted),
70 for a lost device context (cascade/exit_codes.py `EXIT_DEVICE`, the engine's; restarted), 1 for anything else
(restarted with exponential back-off).
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from cascade.config import EngineConfig
from neurons.chain import ChainError, MetagraphSource, connect_chain, offline_source
from neurons.config import MinerConfig

if TYPE_CHECKING:
    from neurons.http_guard import HttpLimits

EXIT_CRASH = 1
EXIT_CONFIG = 2


class StartupError(RuntimeError):
    """A start-up step that failed; `str()` is the operator's line (or lines, one per problem)."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Timeline:
    """How long each start-up step took (logged as one line at READY; the cold-start report)."""

    began_s: float = field(default_factory=time.monotonic)
    steps: list[tuple[str, float]] = field(default_factory=list)
    _last_s: float = 0.0

    def mark(self, step: str) -> None:
        now_s = time.monotonic()
        self.steps.append((step, now_s - (self._last_s or self.began_s)))
        self._last_s = now_s

    def line(self) -> str:
        parts = ", ".join(f"{step} {seconds:.2f}s" for step, seconds in self.steps)
        return f"start-up: {parts}; total {time.monotonic() - self.began_s:.2f}s"


# -- listeners ------------------------------------------------------------------------------------

def bind_listener(host: str, port: int, what: str, key: str, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket of this process on host:port; StartupError (exit 2) naming the holder if taken.

    Bound and listening before anything else starts, so the port is ours for the whole start-up.
    SO_REUSEADDR lets a restarted miner take its port back from TIME_WAIT; it never lets two
    listeners share a port on Linux (SO_REUSEPORT, which would, is not set).
    """
    return bind_listeners(host, port, what, key, backlog, groups=0)[0]


def bind_listeners(host: str, port: int, what: str, key: str, backlog: int, groups: int) -> list[socket.socket]:
    """`bind_listener`'s socket (groups 0), or `groups` sockets on the port, each caller's address routed to one of
    them (neurons/caller_routing.py: one per front process); the same errors."""
    from neurons.caller_routing import listeners_by_caller

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise StartupError(f"{key}: cannot bind the {what} to {host!r}: {exc.strerror}") from exc
    try:
        if groups:
            return listeners_by_caller(address, family, groups, backlog)
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        return [sock]
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"{key}: the {what} port {host}:{port} is already in use{_holder(port)}; stop that "
                               f"process or choose another port") from exc
        raise StartupError(f"{key}: cannot bind the {what} to {host}:{port}: {exc.strerror}") from exc


def _holder(port: int) -> str:
    """' by pid N (name)' when the listener on `port` belongs to a process we may inspect; '' otherwise."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except Exception:  # noqa: BLE001 - best effort: the message is complete without it
        return ""
    return ""


# -- wallet and metagraph -------------------------------------------------------------------------

def request_slots_line(limits: HttpLimits, fronts: int) -> str:
    """How many requests the HTTP layer lets in at once, as the start-up log and `--check` say it; a total that leaves
    a front fewer than two slots stops the start (neurons/fronts.py)."""
    from neurons.fronts import describe_request_slots, too_few_request_slots

    if (problem := too_few_request_slots(limits, fronts)) is not None:
        raise StartupError(problem)
    return describe_request_slots(limits, fronts)


def open_wallet(config: MinerConfig) -> tuple[Any, str]:
    """(wallet, hotkey ss58); StartupError (exit 2) for a missing or password-protected hotkey."""
    from bittensor_wallet import Wallet

    wallet = Wallet(name=config.wallet.name, hotkey=config.wallet.hotkey, path=config.wallet.path)
    where = f"{config.wallet.name}/{config.wallet.hotkey} in {config.wallet.path}"
    if not wallet.hotkey_file.exists_on_device():
        raise StartupError(f"wallet: hotkey {where} not found (create or regenerate it with btcli; see README step 2)")
    if wallet.hotkey_file.is_encrypted():
        raise StartupError(f"wallet: hotkey {where} is password-protected; the miner needs it unencrypted")
    try:
        # NOTE: read once and kept. Without it every `wallet.hotkey` reads and parses the key file again
        # (bittensor-wallet 4.1: ~1.3 ms), and the axon reads it at least twice per request (its preprocess and
        # signature check): on the 2-core box ~half of the HTTP thread's time per request (the stock axon pays it too).
        wallet.unlock_hotkey()
        return wallet, wallet.hotkey.ss58_address
    except Exception as exc:  # bittensor-wallet raises several types for an unreadable key
        raise StartupError(f"wallet: cannot read hotkey {where}: {' '.join(str(exc).split())}") from exc


def open_metagraph(config: MinerConfig) -> tuple[Any, MetagraphSource]:
    """(subtensor or None offline, metagraph source, not yet refreshing)."""
    if config.chain.offline:
        path = config.chain.metagraph_file
        try:
            return None, offline_source(path)  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            raise StartupError(f"chain.metagraph_file: cannot read {path}: {' '.join(str(exc).split())}") from exc
    try:
        return connect_chain(config.chain.network, config.chain.netuid, config.chain.resync_interval_s,
                             config.chain.timeout_s)
    except ChainError as exc:
        raise StartupError(str(exc), EXIT_CRASH) from exc  # the network may come back: restart with back-off


# -- models and placement -------------------------------------------------------------------------

def preflight(config: MinerConfig, engine_config: EngineConfig) -> tuple[list[Any], list[Any] | None]:
    """(findings, slots): models on disk, devices, placement. Imports torch (to count GPUs), loads nothing."""
    from cascade.preflight import model_findings, placement_findings

    findings = model_findings(engine_config.cascade, config.cascade_file)
    placed, slots = placement_findings(engine_config.cascade)
    return findings + placed, slots


def require(findings: list[Any]) -> None:
    failed = [f for f in findings if not f.ok]
    if failed:
        raise StartupError("\n".join(f"{f.step}: {f.text}" for f in failed))


# -- --check --------------------------------------------------------------------------------------

def check(config: MinerConfig, engine_config: EngineConfig, say: Callable[[str], None] = print) -> int:
    """Every start-up step short of loading weights, one line each; 0 when the miner would start."""
    problems = 0
    crash = False

    def step(name: str, run: Callable[[], str]) -> None:
        nonlocal problems, crash
        try:
            say(f"ok   {name}: {run()}")
        except StartupError as exc:
            problems += 1
            crash = crash or exc.code == EXIT_CRASH
            for line in str(exc).splitlines():
                say(f"FAIL {name}: {line.removeprefix(name + ': ')}")

    say(f"ok   config: {config.cascade_file} ({len(engine_config.cascade.levels)} levels, cascade version "
        f"{engine_config.cascade.version}, release {engine_config.cascade.release})")
    running: list[str] = []  # "pid N": the ports are this config's running miner's

    def listeners() -> str:
        bound: list[socket.socket] = []
        try:
            bound.append(bind_listener(config.axon.host, config.axon.port, "axon", "axon.port"))
            if config.metrics.port:
                bound.append(bind_listener(config.metrics.host, config.metrics.port, "metrics", "metrics.port"))
        except StartupError:
            own = own_running_miner(config)
            if own is None:
                raise
            running.append(own)
            return f"{', '.join(_addresses(config))} held by the miner running for them ({own})"
        finally:
            for sock in bound:
                sock.close()
        return ", ".join(f"{s}" for s in _addresses(config)) + " free"

    step("listeners", listeners)

    def request_slots() -> str:
        from neurons.config import front_processes
        from neurons.fronts import lowered_per_address_slots
        from neurons.miner import http_limits

        limits, fronts = http_limits(config), front_processes(config.axon)
        line = request_slots_line(limits, fronts)
        lowered = lowered_per_address_slots(limits, fronts) if fronts else None
        return line + (f"; note: {lowered}" if lowered else "")

    step("request slots", request_slots)
    step("wallet", lambda: f"hotkey {open_wallet(config)[1]}")

    def metagraph() -> str:
        _, source = open_metagraph(config)
        return f"netuid {source.snapshot.netuid}, {len(source.snapshot.neurons)} neurons"

    step("metagraph", metagraph)
    findings, _ = preflight(config, engine_config)
    for finding in findings:
        if finding.ok:
            say(f"ok   {finding.step}: {finding.text}")
        elif running and finding.step == "placement":
            say(f"note {finding.step}: {finding.text} (counted with the running miner's models in memory; a "
                f"reload places only what it loads anew and refuses, saying so, what does not fit)")
        else:
            problems += 1
            say(f"FAIL {finding.step}: {finding.text}")
    if problems:
        say(f"{problems} problem(s): the miner would not start")
        return EXIT_CRASH if crash and problems == 1 else EXIT_CONFIG
    say("the miner would start (weights are loaded only by the real start)")
    return 0


def own_running_miner(config: MinerConfig) -> str | None:
    """'pid N, ready, serving V; ...' when this config's ports are held by a miner running on them (found as
    `sn72-miner reload` finds it), with what a reload of it would do; None when they are held by anything else."""
    from neurons.running import NotRunning, find_running, miner_listening_on

    try:
        miner = find_running(config)
    except NotRunning:
        if config.metrics.port:
            return None
        pid = miner_listening_on(config.axon.port)  # no metrics port to ask: an sn72 miner's process is the best sign
        return None if pid is None else f"pid {pid}"
    serving_file = miner.status.get("cascade_file")
    if serving_file != str(config.cascade_file):
        return (f"pid {miner.pid}, {miner.phase}, serving {miner.serving} from {serving_file}: not this config's "
                f"cascade file, so a reload would not read it; restart the miner with this config to serve it")
    return (f"pid {miner.pid}, {miner.phase}, serving {miner.serving}; `sn72-miner reload` with this config puts "
            f"changed files in service")


def _addresses(config: MinerConfig) -> list[str]:
    out = [f"axon {config.axon.host}:{config.axon.port}"]
    if config.metrics.port:
        out.append(f"metrics {config.metrics.host}:{config.metrics.port}")
    return out


def log_plan(findings: list[Any]) -> None:
    for finding in findings:
        logger.info("{}", finding.line())
