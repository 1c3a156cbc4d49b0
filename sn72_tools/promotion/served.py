"""Which served cascades name a model folder: written by `sn72-promote`, read before a folder is overwritten.

A calibration is bound to its weights by content, so overwriting a served model folder in place (`sn72-train
--overwrite`) would make the miner refuse its own cascade at the next start or reload. Promotion leaves a note in
each local model folder it puts in service (`.sn72_served_by.json`; a hidden file, so not part of the folder's
content identity); training refuses to overwrite a folder that a cascade listed there still names.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

NOTE = ".sn72_served_by.json"


def mark_served(model: Path, cascade: Path) -> None:
    """Add `cascade` to the folder's note (a hub id or a weights file: nothing to note)."""
    if not model.is_dir():
        return
    note = model / NOTE
    listed = set(_listed(model))
    listed.add(str(cascade.resolve()))
    note.write_text(json.dumps(sorted(listed), indent=1) + "\n")


def _listed(model: Path) -> list[str]:
    try:
        data = json.loads((model / NOTE).read_text())
    except (OSError, ValueError):
        return []
    return [str(item) for item in data] if isinstance(data, list) else []


def serving_cascades(model: Path) -> list[Path]:
    """The listed cascade files that still name this folder (read as the loader resolves ./ and ../ paths)."""
    target = model.resolve()
    found = []
    for listed in _listed(model):
        path = Path(listed)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        for level in data.get("levels", []) if isinstance(data, dict) else []:
            for expert in level.get("experts", []):
                value = str(expert.get("model", ""))
                resolved = (path.parent / value).resolve() if value.startswith(("./", "../")) else Path(value)
                if resolved == target:
                    found.append(path)
    return found
