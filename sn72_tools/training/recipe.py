"""What a training run does: the recipe (typed and checked at load) and the named presets.

A preset fills the recipe; a flag the operator sets explicitly wins over it. The `sn72-*` presets are the
published SN72 recipe that reached MCC 0.86 per model: ConvNeXt V2-base or DINOv2-base with registers,
12 epochs, lr 5e-5, weight decay 0.05, 10% warm-up, label smoothing 0.05, class weighting, letterbox.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cascade.config import ResizeMode

DEFAULT_MODEL = "natix-network-org/roadwork"  # the subnet's ViT-B/16 baseline (labels None/Roadwork)
Mode = Literal["full", "probe"]
Precision = Literal["auto", "bf16", "fp32"]
BestMetric = Literal["loss", "mcc"]
# Every distortion of sn72_tools/evaluation/distort.py but `native` (which is no augmentation at all).
AUGMENTATIONS = ("centre-crop-224", "letterbox-224", "jpeg", "blur", "noise", "colour-jitter")


class TrainError(Exception):
    """Bad input the operator has to fix (data, model, folders); the message says what and where."""


class Recipe(BaseModel):
    """Every knob of a run; recorded in the model card and `sn72_train.json`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(DEFAULT_MODEL, min_length=1, description="Hub id or local folder of the starting model.")
    mode: Mode = Field("full", description="full: every weight trains; probe: only the classification head.")
    resize: ResizeMode | None = Field(
        None, description="How images meet the model's input; None: the model's recorded mode, else squash."
    )
    epochs: float = Field(3.0, gt=0.0, le=1000.0, description="Passes over the training images.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per optimiser step (per device).")
    eval_batch_size: int = Field(64, ge=1, le=4096, description="Images per batch when judging the held-out set.")
    learning_rate: float = Field(5e-5, gt=0.0, le=1.0, description="Peak learning rate (after warm-up).")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of the steps the learning rate ramps up.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="Cross-entropy label smoothing.")
    class_weighting: bool = Field(False, description="Weigh the loss by inverse class frequency (sklearn balanced).")
    patience: int = Field(3, ge=0, le=1000, description="Evaluations without improvement before stopping (0: never).")
    best_metric: BestMetric = Field("loss", description="What early stopping and the kept model are judged by.")
    holdout: float = Field(0.2, gt=0.0, lt=1.0,
                           description="Share held out for early stopping (stratified) without a --dev set.")
    fit_share: float = Field(0.2, ge=0.0, lt=1.0, description="Share held out for the calibration fit (--refit) "
                             "without a --fit-data set; 0: none.")
    augment: list[str] = Field(default_factory=list, description="Distortions applied while training (distort.py).")
    augment_p: float = Field(0.5, ge=0.0, le=1.0, description="Chance an image is distorted in an epoch.")
    precision: Precision = Field("auto", description="auto: bf16 on a CUDA device that has it, else fp32.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds the split, the head, shuffling and augmentation.")
    workers: int = Field(0, ge=0, le=64, description="Data-loading processes (0: in the training process).")

    @field_validator("augment")
    @classmethod
    def _known_augmentations(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown}; known: {', '.join(AUGMENTATIONS)}")
        return value

    @model_validator(mode="after")
    def _room_to_train(self) -> Recipe:
        if self.holdout + self.fit_share > 0.8:
            raise ValueError(f"holdout ({self.holdout}) and fit_share ({self.fit_share}) leave less than 20% of the "
                             "data to train on")
        return self


_SN72: dict[str, Any] = {
    "mode": "full",
    "epochs": 12,
    "learning_rate": 5e-5,
    "weight_decay": 0.05,
    "warmup_ratio": 0.1,
    "label_smoothing": 0.05,
    "class_weighting": True,
    "resize": "letterbox",
    "best_metric": "mcc",
}
PRESETS: dict[str, dict[str, Any]] = {
    "sn72-convnextv2": {**_SN72, "model": "facebook/convnextv2-base-22k-224"},
    "sn72-dinov2": {**_SN72, "model": "facebook/dinov2-with-registers-base"},
}


def build_recipe(preset: str | None, overrides: dict[str, Any]) -> Recipe:
    """The preset's values (if any), then every override that is not None."""
    if preset is not None and preset not in PRESETS:
        raise TrainError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    values = {**(PRESETS[preset] if preset else {}), **{k: v for k, v in overrides.items() if v is not None}}
    return Recipe.model_validate(values)
