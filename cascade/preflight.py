"""Checks a cascade can start, short of loading any weights: models on disk, vLLM, devices, placement.

The miner runs these before it loads anything (and `--check` runs nothing else), so a missing model,
an absent vLLM, a pinned GPU that is not there or a cascade that does not fit ends the start-up in
one line per problem within seconds, instead of a traceback minutes into loading.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cascade.config import CascadeConfig
from cascade.placement import DeviceInfo, PlacementError, Slot, plan_placement, visible_devices

_VLLM_BACKENDS = frozenset({"vlm_vllm"})


@dataclass(frozen=True)
class Finding:
    step: str  # "models", "devices", "placement"
    ok: bool
    text: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.step}: {self.text}"


def model_findings(cascade: CascadeConfig, cascade_file: Path | None = None) -> list[Finding]:
    """One finding per expert: is its model where the loader will look for it, with no network?"""
    # NOTE: the pure classification lives with the download tool (one definition of "where a model comes
    # from"); it imports nothing heavy and only this start-up check uses it, never the request path.
    from cascade.model_sources import Source, check_local, plan_downloads

    fetch = f"sn72-download-models --cascade {cascade_file or '<cascade file>'}"
    findings = []
    for ref in plan_downloads(cascade):
        head = f"{ref.expert} ({ref.backend}) {ref.model}"
        try:
            if ref.problem:
                raise ValueError(ref.problem)
            if ref.source is Source.LOCAL:
                check_local(ref)
                where = "on disk"
            elif ref.source is Source.HUB:
                where = _in_hub_cache(ref.model, ref.backend, fetch)
            elif ref.source is Source.ULTRALYTICS:
                where = _in_ultralytics_dir(ref.model, fetch)
            else:
                where = "served by the remote server (not checked here)"
        except ValueError as exc:
            findings.append(Finding("models", False, f"{head}: {exc}"))
            continue
        if ref.backend in _VLLM_BACKENDS and importlib.util.find_spec("vllm") is None:
            findings.append(Finding("models", False, f"{head}: vLLM is not installed (pip install -e '.[vllm]', or "
                                                     "serve the VLM elsewhere with the vlm_remote backend)"))
            continue
        findings.append(Finding("models", True, f"{head}: {where}"))
    return findings


def _in_hub_cache(repo: str, backend: str, fetch: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from cascade.model_sources import TRANSFORMERS_BACKENDS

    try:
        folder = Path(snapshot_download(repo, local_files_only=True))
    except (LocalEntryNotFoundError, OSError) as exc:
        raise ValueError(f"not in the Hugging Face cache ({type(exc).__name__}); fetch it with `{fetch}`") from exc
    if backend in TRANSFORMERS_BACKENDS and not (folder / "config.json").is_file():
        raise ValueError(f"cached at {folder} without config.json; fetch it again with `{fetch}`")
    return f"in the hub cache at {folder}"


def _in_ultralytics_dir(model: str, fetch: str) -> str:
    from cascade.model_sources import default_weights_dir, ultralytics_target

    target = ultralytics_target(model, default_weights_dir())
    if not target.is_file():
        raise ValueError(f"not at {target}; fetch it with `{fetch}`")
    return f"at {target}"


def placement_findings(cascade: CascadeConfig, devices: Sequence[DeviceInfo] | None = None
                       ) -> tuple[list[Finding], list[Slot] | None]:
    """Devices seen, and whether the plan fits; the slots when it does. Imports torch to count GPUs."""
    devices = visible_devices() if devices is None else list(devices)
    findings = []
    if devices:
        names = ", ".join(f"{d.name} ({d.free_bytes / 2**30:.1f} of {d.total_bytes / 2**30:.1f} GB free)"
                          for d in devices)
        findings.append(Finding("devices", True, f"CUDA: {names}"))
    else:
        on_cpu = [e.name for e in cascade.experts() if e.backend != "vlm_remote"]
        findings.append(Finding("devices", True, f"no CUDA device visible: {len(on_cpu)} expert(s) would run on the "
                                                 f"CPU ({', '.join(on_cpu)})"))
    try:
        slots = plan_placement(cascade.experts(), devices)
    except PlacementError as exc:
        text = " ".join(line.strip() for line in str(exc).splitlines())
        findings.append(Finding("placement", False, text))
        return findings, None
    by_name = {e.name: e for e in cascade.experts()}
    cpu_vllm = sorted({s.expert for s in slots if s.device == "cpu" and by_name[s.expert].backend in _VLLM_BACKENDS})
    for name in cpu_vllm:
        findings.append(Finding("placement", False, f"{name} (vlm_vllm) would run on the CPU: vLLM here needs a CUDA "
                                                    "device (pin it to cuda:N on a GPU machine, or use vlm_remote)"))
    if not cpu_vllm:
        per_device: dict[str, list[str]] = {}
        for slot in slots:
            per_device.setdefault(slot.device, []).append(f"{slot.expert}#{slot.replica}")
        plan = "; ".join(f"{device}: {', '.join(names)}" for device, names in per_device.items())
        findings.append(Finding("placement", True, f"{len(slots)} replica(s) fit: {plan}"))
    return findings, None if cpu_vllm else slots
