"""Where each model a cascade names comes from (hub, local path, ultralytics weights, remote server), and where the
loaders will look for it: one definition shared by start-up's offline check (cascade/preflight.py) and the download
tool (sn72_tools/download_models.py). Imports nothing heavy at module level.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlparse

from cascade.config import CascadeConfig


class Source(StrEnum):
    HUB = "hub"
    LOCAL = "local"
    ULTRALYTICS = "ultralytics"
    REMOTE = "remote"
    INVALID = "invalid"


# Backends that load a transformers folder (config.json + weights); vLLM reads the same layout.
TRANSFORMERS_BACKENDS = frozenset({"hf_classifier", "zero_shot", "owlv2", "vlm_transformers", "vlm_vllm"})
# owner/name as the hub spells repo ids; a bare name is a legacy canonical id (e.g. "gpt2").
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
@dataclass(frozen=True)
class ModelRef:
    """One expert's model and where it comes from; `problem` is set when it cannot be fetched."""

    expert: str
    backend: str
    model: str
    source: Source
    problem: str | None = None


def classify_model(model: str, backend: str, exists: Callable[[str], bool] = os.path.exists) -> tuple[Source, str]:
    """Where `model` comes from, and a problem when it cannot be fetched ("" when none).

    Pure apart from `exists` (injected in tests). The order mirrors the loaders: transformers and
    ultralytics both take an existing path before anything else, so an existing path is local.
    """
    if backend == "vlm_remote":
        return Source.REMOTE, ""
    if model.lower().startswith(("http://", "https://")):
        if backend == "detector":
            return Source.ULTRALYTICS, ""
        return Source.INVALID, f"{backend} loads a hub id or a local folder, not a URL"
    if model.startswith(("/", "./", "../", "~")) or exists(model):
        return Source.LOCAL, ""
    if backend == "detector" and "/" not in model:
        if model.endswith(".pt"):
            return Source.ULTRALYTICS, ""
        return Source.INVALID, "a detector needs a .pt weights name (e.g. yolo11m.pt), a URL, a hub repo or a path"
    if _HUB_ID.match(model) and ".." not in model and "--" not in model:
        return Source.HUB, ""
    return Source.INVALID, "neither an existing path nor a hub id (owner/name)"


def plan_downloads(config: CascadeConfig, exists: Callable[[str], bool] = os.path.exists) -> list[ModelRef]:
    """One reference per expert, in cascade order."""
    refs = []
    for expert in config.experts():
        source, problem = classify_model(expert.model, expert.backend, exists)
        refs.append(ModelRef(expert.name, expert.backend, expert.model, source, problem or None))
    return refs


def ultralytics_target(model: str, weights_dir: Path) -> Path:
    """The file an ultralytics weight name or URL is saved as inside `weights_dir`."""
    if model.lower().startswith(("http://", "https://")):
        return weights_dir / Path(unquote(urlparse(model).path)).name
    return weights_dir / model


def check_local(ref: ModelRef) -> str:
    """'local, present' for a usable path; ValueError naming the path when it is not."""
    path = Path(ref.model).expanduser()
    if not path.exists():
        raise ValueError(f"local path {path} does not exist")
    if ref.backend in TRANSFORMERS_BACKENDS and path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"local folder {path} has no config.json: it is not a saved transformers model")
    if ref.backend in TRANSFORMERS_BACKENDS and path.is_file():
        raise ValueError(f"local path {path} is a file; {ref.backend} loads a model folder")
    return "local, present"


def default_weights_dir() -> Path:
    """ultralytics' own weights folder: where `YOLO("yolo11m.pt")` looks before downloading."""
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["weights_dir"])
