"""Tiny cascades as cascade.yaml holds them (dicts), around the tiny ViT of `sn72_lab.tiny_models.build_tiny_vit`.

One place knows the shape of the test ViT's expert entry (the hf_classifier backend, the CPU, the "Roadwork" label
its random head answers for), so each test states only what differs: its batch size, warm-up, calibration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def vit_expert(model: Path | str, name: str = "vit", **fields: Any) -> dict[str, Any]:
    """The tiny ViT on the CPU, answering P("Roadwork"); `fields` add or replace keys of the expert's entry."""
    return {"name": name, "backend": "hf_classifier", "model": str(model), "device": "cpu",
            "options": {"positive_labels": ["Roadwork"]}, **fields}


def level(*experts: dict[str, Any], name: str = "fast", exit_margin: float | None = 0.3) -> dict[str, Any]:
    """One level of `experts`; `exit_margin=None` leaves the margin out (the schema's default)."""
    entry: dict[str, Any] = {"name": name, "experts": list(experts)}
    if exit_margin is not None:
        entry["exit_margin"] = exit_margin
    return entry


def cascade_of(*levels: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A cascade of `levels`, cheapest first; `top` are its other top-level keys (version, prior, answer, ...)."""
    return {**top, "levels": list(levels)}


def vit_cascade(model: Path | str, version: str = "e2e", **expert: Any) -> dict[str, Any]:
    """The one-level, one-ViT cascade most miner tests serve: version `version`, prior 0.5, exit margin 0.3."""
    return cascade_of(level(vit_expert(model, **expert)), version=version, prior=0.5)
