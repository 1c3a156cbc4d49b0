"""Who is on the subnet: a metagraph snapshot from the chain, or from a local JSON file offline.

Guards read an immutable `MetagraphSnapshot`; a background thread replaces it (file changed, or the
chain re-synced), so the event loop never waits on the chain or the disk.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger


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
    """The offline file format, written atomically (used by the demo, the tests and operators)."""
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
        first = load()
        if first is None:
            raise RuntimeError(f"{name}: no metagraph could be loaded")
        self.snapshot: MetagraphSnapshot = first
        self._thread = threading.Thread(target=self._run, name=f"metagraph-{name}", daemon=True)

    def start(self) -> MetagraphSource:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                fresh = self._load()
            except Exception as exc:  # noqa: BLE001 - keep serving with the last good snapshot
                logger.warning("{}: refresh failed, keeping the last snapshot: {!r}", self._name, exc)
                continue
            if fresh is not None:
                self.snapshot = fresh


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


def chain_source(subtensor: Any, netuid: int, interval_s: float) -> MetagraphSource:
    """A lite metagraph synced from the chain every `interval_s`."""

    def load() -> MetagraphSnapshot:
        metagraph = subtensor.metagraph(netuid=netuid, lite=True)
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
