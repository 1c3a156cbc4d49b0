"""Tiny random-weight models built from configs, saved like hub snapshots.

No machine here reaches a model hub: the demo and the tests build these into a folder and load them
through the same `from_pretrained` / `YOLO(...)` paths that load a hub id. Their predictions are
meaningless; they exercise shapes, batching, routing and timing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

ROADWORK_LABELS = {0: "None", 1: "Roadwork"}  # as the subnet's baseline classifier names them


def build_tiny_vit(folder: Path, seed: int = 0) -> Path:
    """A 2-layer ViT image classifier with the baseline's labels, plus its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        id2label=ROADWORK_LABELS,
        label2id={v: k for k, v in ROADWORK_LABELS.items()},
    )
    model = ViTForImageClassification(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def build_vit_b16(folder: Path, seed: int = 0) -> Path:
    """A real-size ViT-B/16 at 224 with random weights (the baseline's architecture), for benchmarks."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(num_labels=2, id2label=ROADWORK_LABELS, label2id={v: k for k, v in ROADWORK_LABELS.items()})
    ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "tiny-vit": build_tiny_vit,
}
