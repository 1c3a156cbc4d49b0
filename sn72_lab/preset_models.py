"""Random-weight stand-ins for the training presets' starting models, saved like hub snapshots.

Each preset of sn72_tools/training/recipe.py starts from a hub checkpoint; no machine here reaches the hub. These
builders write a folder that `AutoModelForImageClassification.from_pretrained` loads as it loads the hub id (the
preset's recipe with `model` set to the folder): `tiny` for tests on a CPU, `real` for throughput (the hub model's
architecture from the model classes' configs, and its image processor's geometry; random weights, nothing
downloaded). Like the hub checkpoints, the stand-ins carry no roadwork head (their classes are placeholders), so
the trainer gives them its new seeded two-class head, as it does the real ones; `roadwork_head=True` builds them
with the baseline's None/Roadwork head instead (a random model a served cascade's hf_classifier expert can load).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from sn72_tools.training.labels import ROADWORK_LABELS
from sn72_tools.training.recipe import ENSEMBLES, PRESETS

Size = Literal["tiny", "real"]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_PLACEHOLDER_LABELS = {0: "class-a", 1: "class-b", 2: "class-c"}  # not a roadwork head: the trainer adds one


def _labels(roadwork_head: bool = False) -> dict[str, Any]:
    labels = ROADWORK_LABELS if roadwork_head else _PLACEHOLDER_LABELS
    return {"num_labels": len(labels), "id2label": labels, "label2id": {v: k for k, v in labels.items()}}


def _save(folder: Path, model_class: Any, config: Any, processor: Any, device: str, seed: int) -> Path:
    import torch

    from sn72_lab.tiny_models import materialise

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    materialise(model_class, config, device).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_vit(folder: Path, size: Size = "tiny", seed: int = 0, device: str = "cpu",
              roadwork_head: bool = False) -> Path:
    """google/vit-base-patch16-224-in21k's architecture (ViTConfig's defaults: B/16 at 224) or a 2-layer one."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    if size == "real":
        config, side = ViTConfig(**_labels(roadwork_head)), 224
    else:
        config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,  # type: ignore[call-arg]
                           num_attention_heads=2, intermediate_size=64, **_labels(roadwork_head))
        side = 32
    return _save(folder, ViTForImageClassification, config, ViTImageProcessor(size={"height": side, "width": side}),
                 device, seed)


def build_convnextv2(folder: Path, size: Size = "tiny", seed: int = 0, device: str = "cpu",
                     roadwork_head: bool = False) -> Path:
    """facebook/convnextv2-base-22k-224's architecture (depths 3-3-27-3, widths 128-1024) or a 2-stage one."""
    from transformers import ConvNextImageProcessor, ConvNextV2Config, ConvNextV2ForImageClassification

    if size == "real":
        config = ConvNextV2Config(depths=[3, 3, 27, 3], hidden_sizes=[128, 256, 512, 1024],  # type: ignore[call-arg]
                                  **_labels(roadwork_head))
        side = 224
    else:
        config = ConvNextV2Config(num_stages=2, depths=[1, 1], hidden_sizes=[16, 32],  # type: ignore[call-arg]
                                  image_size=32, **_labels(roadwork_head))
        side = 32
    processor = ConvNextImageProcessor(size={"shortest_edge": side}, crop_pct=0.875, image_mean=IMAGENET_MEAN,
                                       image_std=IMAGENET_STD)
    return _save(folder, ConvNextV2ForImageClassification, config, processor, device, seed)


def build_dinov2(folder: Path, size: Size = "tiny", seed: int = 0, device: str = "cpu",
                 roadwork_head: bool = False) -> Path:
    """facebook/dinov2-with-registers-base's architecture (B/14, 4 registers, position grid of 518 px; its processor
    says shortest edge 256, which the hf_classifier expert and the trainer both use) or a 2-layer one."""
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification

    if size == "real":
        config = Dinov2WithRegistersConfig(patch_size=14, image_size=518, num_register_tokens=4,  # type: ignore[call-arg]
                                           **_labels(roadwork_head))
        side, crop = 256, 224
    else:
        config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,  # type: ignore[call-arg]
                                           mlp_ratio=2, patch_size=8, image_size=32, num_register_tokens=4,
                                           **_labels(roadwork_head))
        side, crop = 32, 32
    processor = BitImageProcessor(size={"shortest_edge": side}, crop_size={"height": crop, "width": crop},
                                  image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return _save(folder, Dinov2WithRegistersForImageClassification, config, processor, device, seed)


BUILDERS: dict[str, Callable[..., Path]] = {
    "google/vit-base-patch16-224-in21k": build_vit,
    "facebook/convnextv2-base-22k-224": build_convnextv2,
    "facebook/dinov2-with-registers-base": build_dinov2,
}


def single_presets(names: list[str]) -> list[str]:
    """The single-model presets behind `names` ("all": every preset; an ensemble preset: its members' presets)."""
    wanted = list(PRESETS) if names == ["all"] else names
    out: list[str] = []
    for name in wanted:
        if name in ENSEMBLES:
            out += [p for p in ENSEMBLES[name].values() if p not in out]
        elif name in PRESETS:
            out += [name] if name not in out else []
        else:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join([*PRESETS, *ENSEMBLES])}")
    return out


def build_for_preset(preset: str, folder: Path, size: Size = "tiny", seed: int = 0, device: str = "cpu",
                     roadwork_head: bool = False) -> Path:
    """The stand-in for `preset`'s starting model in `folder` (kept when already built)."""
    hub_id = str(PRESETS[preset]["model"])
    if hub_id not in BUILDERS:
        raise ValueError(f"preset {preset!r} starts from {hub_id}, which has no random-weight builder")
    if (folder / "config.json").is_file():
        return folder
    return BUILDERS[hub_id](folder, size, seed, device, roadwork_head)
