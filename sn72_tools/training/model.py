"""The starting model, the pixels it is trained on, and the loss and metrics the Trainer uses.

Pixels come from the miner's own preprocessing: `decode_image` (with the smallest JPEG scale the expert
would be served at) and `batch_tensor` on the CPU path, in the run's resize mode, with the geometry the
`hf_classifier` expert reads from the same processor (`processor_geometry`). An augmented image is
distorted as bytes by sn72_tools/evaluation/distort.py first, the way a validator's image would arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger

from cascade.config import DecodeConfig, ResizeMode
from cascade.decode import decode_image
from cascade.experts.base import ExpertError
from cascade.experts.hf_classifier import roadwork_indices
from cascade.experts.preprocess import batch_tensor, processor_geometry
from sn72_tools.evaluation import distort
from sn72_tools.evaluation.metrics import binary_metrics
from sn72_tools.training.data import Example
from sn72_tools.training.labels import ROADWORK_LABELS
from sn72_tools.training.recipe import TrainError

POSITIVE_LABELS = ["roadwork"]  # the hf_classifier expert's default `positive_labels`


@dataclass(frozen=True)
class Geometry:
    """What the hf_classifier expert reads from the processor: input size, normalisation."""

    size_hw: tuple[int, int]
    mean: list[float]
    std: list[float]
    rescale: float

    @property
    def side(self) -> int:
        return max(self.size_hw)


@dataclass
class StartingModel:
    model: Any  # a transformers PreTrainedModel for image classification
    processor: Any
    geometry: Geometry
    positive: int  # the class index that means roadwork
    negative: int
    notes: list[str] = field(default_factory=list)

    def class_of(self, label: int) -> int:
        """The model's class index for a 0/1 label."""
        return self.positive if label == 1 else self.negative


@dataclass
class ModelInfo:
    """What the starting model is, read without its weights: enough to check it and to read the data."""

    model_id: str
    config: Any
    processor: Any
    geometry: Geometry


def inspect_model(model_id: str) -> ModelInfo:
    """The model's config and processor; a TrainError unless AutoModelForImageClassification can build it."""
    from transformers import AutoConfig, AutoImageProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot load the model {model_id!r}: {exc}") from exc
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise TrainError(f"{model_id!r} is a {config.model_type!r} model, not an image classifier: "
                         "AutoModelForImageClassification cannot build it")
    try:
        processor = AutoImageProcessor.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot load the image processor of {model_id!r}: {exc}") from exc
    size_hw, mean, std, rescale = processor_geometry(processor, None)
    return ModelInfo(model_id, config, processor, Geometry(size_hw, mean, std, rescale))


def load_starting_model(info: ModelInfo, mode: str, seed: int) -> StartingModel:
    """The model to fine-tune: its own roadwork head if it has one, else a new two-class head (seeded)."""
    from transformers import AutoModelForImageClassification

    model_id = info.model_id
    id2label = {int(k): str(v) for k, v in (info.config.id2label or {}).items()}
    notes: list[str] = []
    try:
        found = roadwork_indices(id2label, POSITIVE_LABELS, []) if len(id2label) == 2 else []
    except ExpertError:
        found = []
    torch.manual_seed(seed)  # a new head is initialised from this
    # fp32 master weights whatever the checkpoint holds: bf16 on CUDA is the Trainer's autocast
    try:
        if len(found) == 1:
            positive, negative = found[0], 1 - found[0]
            model = AutoModelForImageClassification.from_pretrained(model_id, dtype=torch.float32)
            notes.append(f"kept the model's own head: class {positive} {id2label[positive]!r} is roadwork")
        else:
            positive, negative = 1, 0
            model = AutoModelForImageClassification.from_pretrained(
                model_id, num_labels=2, id2label=ROADWORK_LABELS, label2id={v: k for k, v in ROADWORK_LABELS.items()},
                ignore_mismatched_sizes=True, dtype=torch.float32)
            notes.append(f"new two-class head None/Roadwork (the model's classes were {_short(id2label)})")
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot load the model {model_id!r}: {exc}") from exc
    if mode == "probe":
        freeze_backbone(model, model_id)
    return StartingModel(model, info.processor, info.geometry, positive, negative, notes)


def _short(id2label: dict[int, str]) -> str:
    names = [id2label[k] for k in sorted(id2label)]
    return str(names) if len(names) <= 4 else f"{len(names)} labels: {names[:3]}..."


def freeze_backbone(model: Any, model_id: str) -> None:
    """Linear probe: the largest top-level part of the model (its backbone) is frozen; the rest (the head) trains.

    NOTE: by size rather than by name: the backbone is `vit`, `convnextv2`, `vision_model`... and `base_model`
    does not find it in every class (CLIP's), while every *ForImageClassification puts its head beside it.
    """
    sizes = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
    trained = [name for name, size in sizes.items() if size] if sizes else []
    if len(trained) < 2:
        raise TrainError(f"{model_id!r}: cannot tell its backbone from its head; use --mode full")
    backbone = max(sizes, key=lambda name: sizes[name])
    for parameter in model.get_submodule(backbone).parameters():
        parameter.requires_grad_(False)
    head = [name for name in trained if name != backbone]
    logger.info("linear probe: {} frozen, {} trained ({} parameters)", backbone, ", ".join(head),
                sum(p.numel() for p in model.parameters() if p.requires_grad))


class PixelSet(torch.utils.data.Dataset[dict[str, Any]]):
    """Labelled images as the expert would see them, optionally distorted per epoch (seeded)."""

    def __init__(self, examples: Sequence[Example], start: StartingModel, resize: ResizeMode,
                 augment: Sequence[str] = (), augment_p: float = 0.0, seed: int = 0, regime: str = "native") -> None:
        self.examples = list(examples)
        self.regime = regime  # an earlier validators' condition: every training image cropped/letterboxed first
        self.geometry = start.geometry
        self.classes = [start.class_of(e.label) for e in self.examples]
        self.resize: ResizeMode = resize
        self.augment = list(augment)
        self.augment_p = augment_p
        self.seed = seed
        self.epoch = 0
        self.limits = DecodeConfig()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def image_bytes(self, index: int) -> bytes:
        data = self.examples[index].read()
        if self.regime != "native":
            data = distort.apply(self.regime, data, seed=self.seed)
        if self.augment and self.augment_p > 0:
            # Whether and how this image is distorted this epoch: the same in every run (and after --resume).
            rng = distort.image_rng(data, "augment", self.seed + 7919 * self.epoch)
            if rng.random() < self.augment_p:
                data = distort.apply(str(rng.choice(self.augment)), data, seed=self.seed + self.epoch)
        return data

    def pixels(self, data: bytes) -> torch.Tensor:
        g = self.geometry
        image = decode_image(data, self.limits, g.side).image
        return batch_tensor([image], g.size_hw, g.mean, g.std, "cpu", torch.float32, g.rescale, resize=self.resize)[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"pixel_values": self.pixels(self.image_bytes(index)), "labels": self.classes[index]}


def class_weights(labels: Sequence[int], start: StartingModel) -> torch.Tensor:
    """Inverse class frequency per model class (scikit-learn's `balanced`), indexed like the logits."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(labels)
    balanced = compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
    weights = torch.ones(int(start.model.config.num_labels))
    weights[start.negative], weights[start.positive] = float(balanced[0]), float(balanced[1])
    return weights


def make_loss(weights: torch.Tensor | None, label_smoothing: float) -> Callable[..., torch.Tensor]:
    """Cross-entropy with class weights and label smoothing, summed over the batch and divided by the images
    of the whole accumulated step when the Trainer says how many (its convention for a custom loss)."""

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        weight = None if weights is None else weights.to(logits.device)
        total = F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing,
                                reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return total / count

    return loss


def positive_probability(logits: np.ndarray, positive: int) -> np.ndarray:
    """P(roadwork) as the hf_classifier expert computes it: the softmax mass of the roadwork class."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp[:, positive] / exp.sum(axis=-1))


def make_metrics(start: StartingModel) -> Callable[[Any], dict[str, float]]:
    """Held-out MCC and accuracy for the Trainer (validators' np.round binarisation; undefined MCC is 0)."""

    def compute(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        labels = (np.asarray(prediction.label_ids) == start.positive).astype(int)
        metrics = binary_metrics(labels, positive_probability(np.asarray(logits, dtype=np.float64), start.positive))
        return {"mcc": metrics.mcc or 0.0, "accuracy": metrics.accuracy}

    return compute
