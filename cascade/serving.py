"""The cascade being served, and what a new one keeps, loads and frees of it (hot reload).

`RequestPath` holds the serving cascade by reference. Each request takes the one serving when it
starts and uses it to its end (its levels, pooling, prior and coalescer), so putting a new cascade
in service is one assignment on the engine's loop: requests in flight finish on the old one, and
the old one is freed once the last of them has left it.

What a reload must load is decided per expert by `load_key`: the fields an expert and its
micro-batcher are built from, plus a stamp of a local model's files. Experts whose key is unchanged
keep their loaded replicas (and their batchers, with their latency history); only calibration,
weights, margins, the prior and the version may then differ, and nothing is loaded at all.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cascade.coalesce import Coalescer
from cascade.config import CascadeConfig, ExpertConfig
from cascade.consensus import Pooling
from cascade.experts.base import Expert
from cascade.levels import Level
from cascade.placement import DeviceInfo, PlacementError, plan_placement, replica_bytes
from cascade.scheduler import MicroBatcher

# What a loaded replica and its batcher are made from. Everything else of an expert (calibration,
# weight, memory_gb, warmup_batches, expected_latency_ms) is read per answer or only before loading.
LOAD_FIELDS = frozenset(
    {"name", "backend", "model", "device", "replicas", "dtype", "input_size", "resize", "max_batch", "max_wait_ms",
     "wait_when_idle", "worker", "options"}
)


class ReloadKind(enum.StrEnum):
    UNCHANGED = "unchanged"  # the same cascade: nothing to do
    CALIBRATION = "calibration"  # the same loaded replicas; calibration, weights, margins or prior differ
    MODELS = "models"  # replicas to load or to free


class ReloadRefused(RuntimeError):
    """A new cascade that cannot go into service; the old one keeps serving. One-line message."""

    def __init__(self, stage: str, message: str, restart_fits: bool = False) -> None:
        super().__init__(" ".join(message.split()))
        self.stage = stage  # invalid, placement, load, warmup, closed
        self.restart_fits = restart_fits  # placement only: it would fit once the serving cascade is gone


def model_stamp(model: str) -> str:
    """Sizes and modification times of a local model's files ("" for a hub id): a model retrained in place
    under the same path is loaded again. NOTE: a hub id's cached snapshot is not stamped (the miner
    runs offline; a new snapshot comes with a new download, which operators follow with a restart)."""
    path = Path(model)
    try:
        if not path.is_absolute() or not path.exists():
            return ""
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    except OSError:
        return ""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def load_key(expert: ExpertConfig, stamp: str) -> str:
    """Equal keys: the loaded replicas of one serve the other unchanged."""
    fields = expert.model_dump(mode="json", include=set(LOAD_FIELDS))
    return json.dumps([fields, stamp], sort_keys=True)


def decode_side(sides: list[int | None]) -> int | None:
    """Smallest side JPEGs are decoded to: the largest expert input (None: some expert wants full size)."""
    if not sides or None in sides:
        return None
    return max(s for s in sides if s is not None)


def defers_jpegs(levels: list[Level]) -> bool:
    """Whether a JPEG may wait encoded for the first level: every replica there decodes JPEGs on its device.

    Otherwise the first level may need host arrays, and they are decoded at once, in the same hop as the
    hash. NOTE: replicas on a second GPU of the process get no nvJPEG (cascade/experts/jpeg.py), so an expert
    spread over two GPUs in one process keeps the PIL path: half its requests would otherwise pay a second hop.
    """
    return bool(levels) and all(b.takes_jpeg for b in levels[0].replicas())


@dataclass(eq=False)
class ServingCascade:
    """A cascade as served: its config, run-time levels (batchers per replica), pooling and coalescer."""

    config: CascadeConfig
    levels: list[Level]
    pooling: Pooling
    decode_min_side: int | None = None
    defer_jpegs: bool = False  # JPEGs for the first level left encoded (`defers_jpegs`)
    stamps: dict[str, str] = field(default_factory=dict)  # expert name -> model_stamp when loaded
    # In-flight computations of this cascade only: a request never shares another cascade's answer.
    coalescer: Coalescer = field(default_factory=Coalescer)
    users: int = 0  # requests that started on it and have not finished
    retired: bool = False
    _on_idle: Callable[[ServingCascade], None] | None = None

    @classmethod
    def empty(cls, config: CascadeConfig) -> ServingCascade:
        """Before the engine starts: the config's pooling and prior, no levels."""
        return cls(config, [], Pooling.from_config(config))

    @property
    def version(self) -> str:
        return self.config.version

    def replicas(self) -> list[MicroBatcher]:
        return [b for level in self.levels for b in level.replicas()]

    def expert_configs(self) -> dict[str, ExpertConfig]:
        return {name: config for level in self.levels for name, config in level.experts.items()}

    def batchers(self) -> dict[str, list[MicroBatcher]]:
        return {name: batchers for level in self.levels for name, batchers in level.batchers.items()}

    # -- lifetime (engine loop only) ----------------------------------------------------------
    def enter(self) -> ServingCascade:
        """One request's use begins (it computes on this cascade until answered); `leave()` on every exit."""
        self.users += 1
        return self

    def leave(self) -> None:
        self.users -= 1
        self._idle_check()

    def retire(self, on_idle: Callable[[ServingCascade], None]) -> None:
        """Out of service: `on_idle(self)` once no request holds it (at once if none does)."""
        self.retired = True
        self._on_idle = on_idle
        self._idle_check()

    def _idle_check(self) -> None:
        if self.retired and self.users == 0 and self._on_idle is not None:
            on_idle, self._on_idle = self._on_idle, None
            on_idle(self)


@dataclass(frozen=True)
class ReloadPlan:
    kind: ReloadKind
    kept: dict[str, list[MicroBatcher]]  # expert name -> its serving replicas, reused as they are
    to_load: list[ExpertConfig]  # experts whose replicas are loaded anew
    dropped: list[str]  # serving replicas the new cascade does not keep


def plan_reload(serving: ServingCascade, new: CascadeConfig,
                stamp: Callable[[str], str] = model_stamp) -> ReloadPlan:
    """What a reload from `serving` to `new` keeps, loads and frees."""
    old_configs, old_batchers = serving.expert_configs(), serving.batchers()
    kept: dict[str, list[MicroBatcher]] = {}
    to_load: list[ExpertConfig] = []
    for expert in new.experts():
        old = old_configs.get(expert.name)
        if old is not None and load_key(old, serving.stamps.get(expert.name, "")) == load_key(expert, stamp(
                expert.model)):
            kept[expert.name] = old_batchers[expert.name]
        else:
            to_load.append(expert)
    kept_ids = {id(b) for batchers in kept.values() for b in batchers}
    dropped = [b.replica for b in serving.replicas() if id(b) not in kept_ids]
    if to_load or dropped:
        kind = ReloadKind.MODELS
    elif serving.config.model_dump(mode="json") == new.model_dump(mode="json"):
        kind = ReloadKind.UNCHANGED
    else:
        kind = ReloadKind.CALIBRATION
    return ReloadPlan(kind, kept, to_load, dropped)


@dataclass(frozen=True)
class ReloadReport:
    """What a reload did (for the log line, the metrics and the bench)."""

    kind: ReloadKind
    version: str
    loaded: list[str]  # replicas loaded and warmed ("name@device")
    kept: int  # replicas reused
    dropped: list[str]  # replicas freed once the old cascade is idle
    load_s: float  # loading and warming the new replicas
    total_s: float  # from the call to the swap


@dataclass
class Loading:
    """Replicas loaded so far, and where loading stands (a failure names its stage and replica)."""

    placed: dict[str, list[Expert]] = field(default_factory=dict)
    load_s: dict[str, float] = field(default_factory=dict)
    warmup_s: dict[str, float] = field(default_factory=dict)
    stage: str = "load"
    replica: str = ""
    current: Expert | None = None  # built, not yet in `placed`

    def experts(self) -> list[Expert]:
        loaded = [e for replicas in self.placed.values() for e in replicas]
        return loaded + ([self.current] if self.current is not None else [])

    def take(self) -> list[Expert]:
        """Every replica built so far, forgotten here (so that releasing them frees them)."""
        experts = self.experts()
        self.placed, self.current = {}, None
        return experts


def without(devices: Sequence[DeviceInfo], cascades: list[ServingCascade]) -> list[DeviceInfo]:
    """The devices with the memory the plan gives every replica of `cascades` counted as free again."""
    replicas = {id(b): b for c in cascades for b in c.replicas()}.values()
    out = []
    for device in devices:
        held = sum(replica_bytes(b.expert.config, device) for b in replicas if b.device == device.name)
        out.append(DeviceInfo(device.name, device.total_bytes, min(device.total_bytes, device.free_bytes + held)))
    return out


def fits(cascade: CascadeConfig, devices: Sequence[DeviceInfo]) -> bool:
    """Whether the whole cascade could be placed on `devices`."""
    try:
        plan_placement(cascade.experts(), devices)
    except PlacementError:
        return False
    return True
