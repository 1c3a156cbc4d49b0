"""Who is on the subnet: a metagraph snapshot from the chain, or from a local JSON file offline.

Guards read an immutable `MetagraphSnapshot`; a background thread replaces it (file changed, or the
chain re-synced), so the event loop never waits on the chain or the disk. Every chain call the project
makes goes through `chain_call`: bounded in time, and one readable line when the chain cannot be reached.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger
from prometheus_client import CollectorRegistry, Gauge

T = TypeVar("T")
DEFAULT_CHAIN_TIMEOUT_S = 60.0


class ChainError(RuntimeError):
    """A chain call that failed or did not answer in time; the message is one line for the operator."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def chain_call(fn: Callable[[], T], what: str, timeout_s: float = DEFAULT_CHAIN_TIMEOUT_S) -> T:
    """`fn()` with a bound on the wait: its value, or a one-line `ChainError` (failed, or no answer in time).

    NOTE: a call that hangs cannot be killed from Python; it is left on a daemon thread (it dies with the
    process) and the caller moves on. A thread pool would be joined at exit and hang the process instead.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as a ChainError
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"chain-call:{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise ChainError(f"{what}: no answer within {timeout_s:g} s (is the network reachable?)")
    if "error" in outcome:
        raise ChainError(f"{what}: {_one_line(outcome['error'])}") from outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Neuron:
    uid: int
    hotkey: str
    validator_permit: bool
    stake: float


@dataclass(frozen=True)
class MetagraphSnapshot:
    netuid: int
    neurons: tuple[Neuron, ...] = ()
    by_hotkey: dict[str, Neuron] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, netuid: int, neurons: list[Neuron]) -> MetagraphSnapshot:
        return cls(netuid, tuple(neurons), {n.hotkey: n for n in neurons})

    def get(self, hotkey: str) -> Neuron | None:
        return self.by_hotkey.get(hotkey)


def parse_metagraph_json(data: Any, source: str = "metagraph file") -> MetagraphSnapshot:
    """{"netuid": 72, "neurons": [{"uid": 0, "hotkey": "5F..", "validator_permit": true, "stake": 1.0e4}]}"""
    if not isinstance(data, dict) or not isinstance(data.get("neurons"), list):
        raise ValueError(f"{source}: expected an object with a 'neurons' list")
    neurons = []
    for i, entry in enumerate(data["neurons"]):
        try:
            neurons.append(
                Neuron(
                    uid=int(entry.get("uid", i)),
                    hotkey=str(entry["hotkey"]),
                    validator_permit=bool(entry.get("validator_permit", False)),
                    stake=float(entry.get("stake", 0.0)),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: neuron #{i} is malformed ({exc!r})") from exc
    return MetagraphSnapshot.of(int(data.get("netuid", 0)), neurons)


def write_metagraph_json(path: Path, netuid: int, neurons: list[Neuron]) -> None:
    """The offline file format, written atomically: the miner reads it (offline_source above), the demo, the tests and
    operators write it; kept beside its reader so the format has one definition."""
    payload = {"netuid": netuid, "neurons": [n.__dict__ for n in neurons]}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


class MetagraphSource:
    """Holds the current snapshot and refreshes it on a daemon thread."""

    def __init__(self, load: Callable[[], MetagraphSnapshot | None], interval_s: float, name: str) -> None:
        self._load = load
        self._interval_s = interval_s
        self._name = name
        self._stop = threading.Event()
        self._listeners: list[Callable[[MetagraphSnapshot], None]] = []
        first = load()
        if first is None:
            raise RuntimeError(f"{name}: no metagraph could be loaded")
        self.snapshot: MetagraphSnapshot = first
        self.synced_s = time.monotonic()  # last successful sync (or file check): the metagraph's age counts from here
        self._thread = threading.Thread(target=self._run, name=f"metagraph-{name}", daemon=True)

    def start(self) -> MetagraphSource:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def subscribe(self, listener: Callable[[MetagraphSnapshot], None]) -> None:
        """Call `listener` with the current snapshot now and with every new one (on the refresh thread)."""
        self._listeners.append(listener)
        listener(self.snapshot)

    def _notify(self, snapshot: MetagraphSnapshot) -> None:
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception as exc:  # noqa: BLE001 - a listener never stops the refresh
                logger.exception("{}: metagraph listener failed: {!r}", self._name, exc)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                fresh = self._load()
            except Exception as exc:  # noqa: BLE001 - keep serving with the last good snapshot
                logger.warning("{}: refresh failed, keeping the last snapshot: {!r}", self._name, exc)
                continue
            self.synced_s = time.monotonic()
            if fresh is not None:
                self.snapshot = fresh
                self._notify(fresh)

    def age_s(self) -> float:
        return time.monotonic() - self.synced_s

    def register_metrics(self, registry: CollectorRegistry) -> Gauge:
        """`sn72_miner_metagraph_age_seconds`: time since the last successful sync, read when scraped."""
        gauge = Gauge("sn72_miner_metagraph_age_seconds", "Seconds since the metagraph was last synced (chain) or "
                      "checked (offline file)", registry=registry)
        gauge.set_function(self.age_s)
        return gauge


def offline_source(path: Path, interval_s: float = 2.0) -> MetagraphSource:
    """A metagraph read from a JSON file, re-read whenever its modification time changes."""
    last: dict[str, float] = {}

    def load() -> MetagraphSnapshot | None:
        mtime = path.stat().st_mtime
        if last.get("mtime") == mtime:
            return None
        snapshot = parse_metagraph_json(json.loads(path.read_text()), str(path))
        if "mtime" in last:
            logger.info("metagraph file {} changed: {} neurons", path, len(snapshot.neurons))
        last["mtime"] = mtime
        return snapshot

    return MetagraphSource(load, interval_s, f"file:{path.name}")


def chain_source(
    subtensor: Any, netuid: int, interval_s: float, timeout_s: float = DEFAULT_CHAIN_TIMEOUT_S
) -> MetagraphSource:
    """A lite metagraph synced from the chain every `interval_s`, each sync bounded by `timeout_s`."""

    def load() -> MetagraphSnapshot:
        metagraph = chain_call(
            lambda: subtensor.metagraph(netuid=netuid, lite=True), f"metagraph sync of netuid {netuid}", timeout_s
        )
        neurons = [
            Neuron(
                uid=int(uid),
                hotkey=str(metagraph.hotkeys[i]),
                validator_permit=bool(metagraph.validator_permit[i]),
                stake=float(metagraph.S[i]),
            )
            for i, uid in enumerate(metagraph.uids)
        ]
        logger.info("metagraph synced from the chain: netuid {}, {} neurons", netuid, len(neurons))
        return MetagraphSnapshot.of(netuid, neurons)

    return MetagraphSource(load, interval_s, f"chain:{netuid}")


def connect_chain(network: str, netuid: int, resync_interval_s: float,
                  timeout_s: float = DEFAULT_CHAIN_TIMEOUT_S) -> tuple[Any, MetagraphSource]:
    """A Subtensor connection and the chain metagraph source; `ChainError` (one line) when unreachable."""
    subtensor = connect_subtensor(network, timeout_s)
    return subtensor, chain_source(subtensor, netuid, resync_interval_s, timeout_s)


def connect_subtensor(network: str, timeout_s: float = DEFAULT_CHAIN_TIMEOUT_S) -> Any:
    import bittensor as bt

    return chain_call(lambda: bt.Subtensor(network=network), f"connecting to the {network} chain", timeout_s)


def lookup_uid(subtensor: Any, hotkey: str, netuid: int, timeout_s: float = DEFAULT_CHAIN_TIMEOUT_S) -> int | None:
    """The hotkey's uid on the subnet (None: not registered there)."""
    uid = chain_call(lambda: subtensor.get_uid_for_hotkey_on_subnet(hotkey, netuid),
                     f"uid lookup on netuid {netuid}", timeout_s)
    return None if uid is None else int(uid)


def publish_axon(subtensor: Any, netuid: int, axon: Any, timeout_s: float = DEFAULT_CHAIN_TIMEOUT_S) -> bool:
    """`serve_axon` with its result logged; a failure is logged, never fatal (the last published ip stays)."""
    try:
        response = chain_call(lambda: subtensor.serve_axon(netuid=netuid, axon=axon), "serve_axon", timeout_s)
    except ChainError as exc:
        logger.error("{} (validators find this miner only at its last published ip:port)", exc)
        return False
    if response.success:
        logger.info("axon published on chain: {}:{}", axon.external_ip, axon.external_port)
        return True
    logger.error("serve_axon failed: {} (validators will not find this miner)", response.message)
    return False


class RegistrationWatch:
    """Notices when this miner's hotkey leaves the metagraph or its uid changes: a log line and two gauges.

    Subscribed to a `MetagraphSource` (called on its refresh thread), it sets the prometheus_client
    gauges `sn72_miner_registered` (0/1) and `sn72_miner_uid` (-1 when not registered) as it sees each
    snapshot; `register_metrics` publishes them in the miner's registry.
    """

    def __init__(self, hotkey: str) -> None:
        self.hotkey = hotkey
        self.uid: int | None = None
        self._seen = False
        self.registered = Gauge("sn72_miner_registered", "1 while this miner's hotkey is in the metagraph",
                                registry=None)
        self.uid_gauge = Gauge("sn72_miner_uid", "This miner's uid on the subnet (-1: not registered)", registry=None)
        self.uid_gauge.set(-1)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(self.registered)
        registry.register(self.uid_gauge)

    def observe(self, snapshot: MetagraphSnapshot) -> None:
        neuron = snapshot.get(self.hotkey)
        uid = None if neuron is None else neuron.uid
        if not self._seen:
            if uid is None:
                logger.warning("this miner's hotkey {} is not in the metagraph of netuid {}: validators will not "
                               "query it", self.hotkey, snapshot.netuid)
            else:
                logger.info("registered on netuid {} as uid {}", snapshot.netuid, uid)
        elif uid != self.uid:
            if uid is None:
                logger.error("DEREGISTERED: hotkey {} is no longer in the metagraph of netuid {} (was uid {}); "
                             "validators stop querying it until it registers again", self.hotkey, snapshot.netuid,
                             self.uid)
            elif self.uid is None:
                logger.warning("registered again on netuid {} as uid {}", snapshot.netuid, uid)
            else:
                logger.warning("uid changed on netuid {}: {} -> {}", snapshot.netuid, self.uid, uid)
        self.uid, self._seen = uid, True
        self.registered.set(0.0 if uid is None else 1.0)
        self.uid_gauge.set(-1.0 if uid is None else float(uid))


def watch_registration(source: MetagraphSource, hotkey: str) -> RegistrationWatch:
    """Start watching `hotkey` in `source` (the current snapshot is checked at once)."""
    watch = RegistrationWatch(hotkey)
    source.subscribe(watch.observe)
    return watch
