"""Which expert replica runs on which device, planned from memory estimates before anything loads.

Planning first and loading second means a cascade that cannot fit fails at start-up with one message
naming every expert that does not fit, instead of an out-of-memory error halfway through loading.

Rules (docs/placement.md explains them for operators):
- `device: cpu` runs on the CPU; `device: cuda:N` runs on that GPU and its memory counts there.
- `device: auto` with no GPU runs on the CPU. With GPUs, experts are placed largest first; each replica
  goes to the GPU with the most memory left among those that do not yet hold a replica of the same
  expert (so two replicas on two GPUs double throughput), else to any GPU where it fits.
- Ties go to the lower device index, so the same config on the same machine always gives the same plan.

"GB" here is GiB (2**30 bytes), the unit torch and nvidia-smi report memory in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loguru import logger

from cascade.config import ExpertConfig

GIB = 1024**3
CPU = "cpu"
# Backends that hold no model on this machine: the model runs on a remote server.
_REMOTE_BACKENDS = frozenset({"vlm_remote"})


@dataclass(frozen=True)
class DeviceInfo:
    """A visible GPU and its memory, as `torch.cuda.mem_get_info` reports it."""

    name: str  # "cuda:0"
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Slot:
    """One replica of one expert on one device ("cpu" or "cuda:N")."""

    expert: str
    replica: int
    device: str


class PlacementError(ValueError):
    """The cascade cannot be placed on the visible devices; the message says what and why."""


def visible_devices() -> list[DeviceInfo]:
    """Every GPU this process can see, with its total and free memory; [] without CUDA.

    torch is imported here, not at module level, so the config can be checked without it.
    NOTE: `mem_get_info` opens a CUDA context on each device (a few hundred MB); the engine uses
    the devices anyway, and the free figure it returns already accounts for that context.
    """
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        devices.append(DeviceInfo(name=f"cuda:{index}", total_bytes=int(total), free_bytes=int(free)))
    return devices


def replica_bytes(expert: ExpertConfig, device: DeviceInfo | None) -> int:
    """Device memory one replica of `expert` is planned to take on `device` (0 on the CPU).

    vLLM pre-allocates `gpu_memory_utilization` of the device's *total* memory whatever the model
    needs, so for `vlm_vllm` the plan takes the larger of that share and `memory_gb`.
    """
    if device is None or expert.backend in _REMOTE_BACKENDS:
        return 0
    need = round(expert.memory_gb * GIB)
    if expert.backend == "vlm_vllm":
        share = float(expert.options.get("gpu_memory_utilization", 0.0))
        need = max(need, round(share * device.total_bytes))
    return need


def plan_placement(
    experts: Sequence[ExpertConfig], devices: Sequence[DeviceInfo], reserve_gb: float = 1.0
) -> list[Slot]:
    """Slots for every replica of every expert, in config order; PlacementError if it cannot fit.

    `reserve_gb` is kept free on every GPU for the CUDA context, allocator fragmentation and
    activations the estimates miss.
    """
    if reserve_gb < 0:
        raise PlacementError(f"reserve_gb must be >= 0, got {reserve_gb}")
    names = [device.name for device in devices]
    if len(set(names)) != len(names):
        raise PlacementError(f"device names must be unique, got {names}")
    by_name = {device.name: device for device in devices}
    reserve = round(reserve_gb * GIB)
    # Memory still unplanned per device, after the reserve; may go negative for an over-full pin.
    left = {device.name: device.free_bytes - reserve for device in devices}
    placed: dict[str, list[Slot]] = {expert.name: [] for expert in experts}
    failures: list[str] = []

    # Pinned experts first: they have no choice, and the auto experts must fit around them.
    for expert in experts:
        if expert.device == "auto":
            continue
        device_name = _canonical(expert.device)
        if device_name == CPU:
            placed[expert.name].append(Slot(expert.name, 0, CPU))
            continue
        if device_name not in by_name:
            visible = ", ".join(names) if names else "none (no CUDA device is visible)"
            raise PlacementError(
                f"expert {expert.name!r} is pinned to device {expert.device!r}, which is not visible; "
                f"visible devices: {visible}"
            )
        need = replica_bytes(expert, by_name[device_name])
        if need > left[device_name]:
            failures.append(
                f"{expert.name!r} needs {_gb(need)} GB on {device_name} (pinned), "
                f"which has {_gb(max(left[device_name], 0))} GB left"
            )
        left[device_name] -= need
        placed[expert.name].append(Slot(expert.name, 0, device_name))

    auto = [expert for expert in experts if expert.device == "auto"]
    # Largest first (stable, so equal estimates keep config order): big models get the roomiest GPUs.
    auto.sort(key=lambda expert: -max((replica_bytes(expert, device) for device in devices), default=0))
    for expert in auto:
        if not devices or expert.backend in _REMOTE_BACKENDS:
            placed[expert.name] = [Slot(expert.name, r, CPU) for r in range(expert.replicas)]
            continue
        missing = 0
        for replica in range(expert.replicas):
            holding = {slot.device for slot in placed[expert.name]}
            choice = _best_device(expert, devices, left, holding)
            if choice is None:
                missing += 1
                continue
            left[choice.name] -= replica_bytes(expert, choice)
            placed[expert.name].append(Slot(expert.name, replica, choice.name))
        if missing:
            need = max(replica_bytes(expert, device) for device in devices)
            count = f", {missing} of {expert.replicas} replicas" if expert.replicas > 1 else ""
            failures.append(f"{expert.name!r} needs {_gb(need)} GB per replica{count}")

    if failures:
        raise PlacementError(_failure_message(failures, devices, reserve_gb, experts, placed))
    slots = [slot for expert in experts for slot in placed[expert.name]]
    logger.debug("placement: {} slots on {}", len(slots), names or [CPU])
    return slots


def _best_device(
    expert: ExpertConfig, devices: Sequence[DeviceInfo], left: dict[str, int], holding: set[str]
) -> DeviceInfo | None:
    """The fitting device with the most memory left, preferring ones without this expert yet."""
    fitting = [device for device in devices if replica_bytes(expert, device) <= left[device.name]]
    fresh = [device for device in fitting if device.name not in holding]
    pool = fresh or fitting
    if not pool:
        return None
    # max() keeps the first of equal keys, and `devices` is in index order: ties go to the lower index.
    return max(pool, key=lambda device: left[device.name])


def _failure_message(
    failures: list[str],
    devices: Sequence[DeviceInfo],
    reserve_gb: float,
    experts: Sequence[ExpertConfig],
    placed: dict[str, list[Slot]],
) -> str:
    lines = [f"cannot place the cascade: {len(failures)} expert(s) do not fit:"]
    lines += [f"  - {failure}" for failure in failures]
    lines.append(f"devices (free memory after the {reserve_gb:g} GB reserve, and what the partial plan used):")
    by_name = {expert.name: expert for expert in experts}
    for device in devices:
        free = max(device.free_bytes - round(reserve_gb * GIB), 0)
        used = sum(
            replica_bytes(by_name[slot.expert], device)
            for slots in placed.values()
            for slot in slots
            if slot.device == device.name
        )
        total = _gb(device.total_bytes)
        lines.append(f"  {device.name}: {_gb(free)} GB free, {_gb(used)} GB planned, {total} GB total")
    if not devices:
        lines.append("  none")
    lines.append("lower memory_gb or replicas, pin experts with device: cuda:N, or add GPUs")
    return "\n".join(lines)


def describe_plan(slots: Sequence[Slot], experts: Sequence[ExpertConfig], devices: Sequence[DeviceInfo]) -> str:
    """The plan as the start-up log shows it: per device, its replicas, planned GB and free GB."""
    by_expert = {expert.name: expert for expert in experts}
    by_device = {device.name: device for device in devices}
    order = [device.name for device in devices] + sorted(
        {slot.device for slot in slots} - set(by_device), key=lambda name: (name != CPU, name)
    )
    lines = [f"placement plan: {len(slots)} replica(s) on {len({slot.device for slot in slots})} device(s)"]
    for name in order:
        device = by_device.get(name)
        here = [slot for slot in slots if slot.device == name]
        rows = []
        planned = 0
        for slot in here:
            expert = by_expert.get(slot.expert)
            need = replica_bytes(expert, device) if expert is not None else 0
            planned += need
            backend = expert.backend if expert is not None else "?"
            rows.append(f"    {slot.expert}#{slot.replica} ({backend}): {_gb(need)} GB")
        if device is None:
            lines.append(f"  {name}: {len(here)} replica(s)")
        else:
            lines.append(
                f"  {name}: {len(here)} replica(s), {_gb(planned)} GB planned, {_gb(device.free_bytes)} GB free "
                f"of {_gb(device.total_bytes)} GB, {_gb(device.free_bytes - planned)} GB left after the plan"
            )
        lines += rows or ["    (idle)"]
    return "\n".join(lines)


def _canonical(device: str) -> str:
    """'cuda' means the first GPU, as it does for torch."""
    return "cuda:0" if device == "cuda" else device


def _gb(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f}"
