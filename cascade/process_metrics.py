"""The miner's Prometheus registry beyond the engine's own metrics (cascade/stats.py).

Process metrics (resident memory, CPU, open files), Python's GC and platform, build information
(package version, cascade version and release, a digest of the calibration), and device memory per
GPU the cascade uses. Everything is a prometheus_client type: no hand-written collectors.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Info, ProcessCollector
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector

from cascade.config import CascadeConfig
from cascade.stats import PREFIX

PACKAGE = "sn72-cascade-miner"

__all__ = ["build_labels", "build_registry", "calibration_digest", "package_version", "process_registry",
           "publish_build_info", "watch_gpu_memory"]


def build_registry(engine: Any) -> CollectorRegistry:
    """The registry holding an engine's metrics (the miner's own when it handed one to the engine)."""
    return engine.stats.registry  # type: ignore[no-any-return]


def process_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """`registry` (or a new one) with process, platform and garbage-collector metrics registered."""
    registry = registry if registry is not None else CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def calibration_digest(cascade: CascadeConfig) -> str:
    """A short digest of every expert's calibration and weight: changes whenever a fit changes them."""
    state = [(e.name, e.calibration.temperature, e.calibration.bias, e.weight) for e in cascade.experts()]
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:12]


def build_labels(cascade: CascadeConfig) -> dict[str, str]:
    """sn72_miner_build_info's labels for `cascade` as served (its version carries the models' digest)."""
    return {"version": package_version(), "cascade_version": cascade.version, "release": cascade.release,
            "calibration": f"{cascade.calibration.name if cascade.calibration else 'yaml'}:"
                           f"{calibration_digest(cascade)}", "levels": str(len(cascade.levels))}


def publish_build_info(registry: CollectorRegistry, cascade: CascadeConfig) -> Info:
    """The build Info, labelled for `cascade`; the reloader (neurons/reload.py) re-labels it on every swap."""
    info = Info(f"{PREFIX}_build", "What is running: package version, cascade version and release, calibration",
                registry=registry)
    info.info(build_labels(cascade))
    return info


def watch_gpu_memory(registry: CollectorRegistry, devices: Sequence[str]) -> Gauge | None:
    """`sn72_miner_gpu_memory_bytes{device, kind}` for each CUDA device in `devices`, read when scraped.

    kind: `allocated` and `reserved` by this process's torch allocator, `used` and `total` on the whole
    device (other processes and vLLM's own pool included). None when no CUDA device is in use.
    """
    cuda = sorted({device for device in devices if device.startswith("cuda")})
    if not cuda:
        return None
    import torch

    gauge = Gauge(f"{PREFIX}_gpu_memory_bytes", "Device memory per GPU the cascade uses", ["device", "kind"],
                  registry=registry)
    for device in cuda:
        index = torch.device(device).index or 0
        reads: dict[str, Callable[[], float]] = {
            "allocated": functools.partial(torch.cuda.memory_allocated, index),
            "reserved": functools.partial(torch.cuda.memory_reserved, index),
            "used": functools.partial(_used_bytes, torch, index),
            "total": functools.partial(_total_bytes, torch, index),
        }
        for kind, read in reads.items():
            gauge.labels(device, kind).set_function(read)
    return gauge


def _used_bytes(torch: Any, index: int) -> float:
    free, total = torch.cuda.mem_get_info(index)
    return float(total - free)


def _total_bytes(torch: Any, index: int) -> float:
    return float(torch.cuda.get_device_properties(index).total_memory)
