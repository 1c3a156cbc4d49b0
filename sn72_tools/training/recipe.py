"""What a training run does: the recipe (typed and checked at load) and the named presets.

A preset fills the recipe; a flag the operator sets explicitly wins over it. The `sn72-*` presets are the
published SN72 recipe that reached MCC 0.86 per model: ConvNeXt V2-base or DINOv2-base with registers,
12 epochs, lr 5e-5, weight decay 0.05, 10% warm-up, label smoothing 0.05, class weighting, letterbox.
`vit-b16-in21k` is the recipe of the best self-reported ViT-B/16 (ImageNet-21k start, focal loss with label
smoothing). `convnext-dinov2` is an ensemble preset (ENSEMBLES): its two members train one run each with their
presets, then the eval tool fits the level that pools them (`python -m sn72_lab.ensemble_recipe`,
docs/training.md "Presets"). Published figures: docs/protocol.md (Baseline and peers).
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
# The validators' image conditions (docs/protocol.md, Images): `native` (since 2026-05-03) trains on the images as
# stored; the earlier two first crop or letterbox every training image to 224 as validators did, then distort it
# (chance augment_p) with REGIME_DISTORTIONS unless --augment names others.
Regime = Literal["native", "centre-crop-224", "letterbox-224"]
REGIMES: tuple[str, ...] = ("native", "centre-crop-224", "letterbox-224")
REGIME_DISTORTIONS = ("jpeg", "blur", "noise", "colour-jitter")


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
    focal_gamma: float = Field(0.0, ge=0.0, le=10.0, description="Focal loss exponent (0: cross-entropy); "
                               "combines with label smoothing and class weighting (losses.py).")
    class_weighting: bool = Field(False, description="Weigh the loss by inverse class frequency (sklearn balanced).")
    patience: int = Field(3, ge=0, le=1000, description="Evaluations without improvement before stopping (0: never).")
    best_metric: BestMetric = Field("loss", description="What early stopping and the kept model are judged by.")
    holdout: float = Field(0.2, gt=0.0, lt=1.0,
                           description="Share held out for early stopping (stratified) without a --dev set.")
    fit_share: float = Field(0.2, ge=0.0, lt=1.0, description="Share held out for the calibration fit (--refit) "
                             "without a --fit-data set; 0: none.")
    augment: list[str] = Field(default_factory=list, description="Distortions applied while training (distort.py).")
    augment_p: float = Field(0.5, ge=0.0, le=1.0, description="Chance an image is distorted in an epoch.")
    regime: Regime = Field("native", description="Validators' image condition trained for: native (as stored, "
                           "no augmentation), or the earlier centre-crop-224 / letterbox-224 with distortions.")
    synthetic_share: float = Field(0.0, ge=0.0, le=0.9, description="Share of each epoch's training samples "
                                   "drawn from the --synthetic set (0: none).")
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

    def distortions(self) -> list[str]:
        """What augments a training image after the regime's crop: --augment, else the regime's distortions."""
        return list(self.augment) or (list(REGIME_DISTORTIONS) if self.regime != "native" else [])

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
    # The published ViT-B/16 (MCC 0.944 self-reported on ~35k images) started from ImageNet-21k and trained with
    # focal loss and label smoothing; gamma 2 (Lin et al.'s), smoothing 0.1 and the schedule are this repo's choice.
    "vit-b16-in21k": {"model": "google/vit-base-patch16-224-in21k", "mode": "full", "epochs": 10,
                      "learning_rate": 2e-5, "weight_decay": 0.05, "warmup_ratio": 0.1, "focal_gamma": 2.0,
                      "label_smoothing": 0.1, "class_weighting": False, "resize": "squash", "best_metric": "mcc"},
}
# Ensemble presets: member expert name -> the preset it trains with. The level pooling the members (weights,
# intercept, threshold map) is fitted by the eval tool, never by the trainer.
ENSEMBLES: dict[str, dict[str, str]] = {
    "convnext-dinov2": {"convnextv2": "sn72-convnextv2", "dinov2": "sn72-dinov2"},
}


def build_recipe(preset: str | None, overrides: dict[str, Any]) -> Recipe:
    """The preset's values (if any), then every override that is not None."""
    if preset is not None and preset in ENSEMBLES:
        members = ENSEMBLES[preset]
        raise TrainError(f"{preset!r} is an ensemble of {len(members)} experts: train each with its own preset ("
                         + ", ".join(f"{name}: --preset {p}" for name, p in members.items())
                         + f"), or all of it with python -m sn72_lab.ensemble_recipe --preset {preset} "
                         "(docs/training.md, Presets)")
    if preset is not None and preset not in PRESETS:
        raise TrainError(f"unknown preset {preset!r}; known: {', '.join([*PRESETS, *ENSEMBLES])}")
    values = {**(PRESETS[preset] if preset else {}), **{k: v for k, v in overrides.items() if v is not None}}
    return Recipe.model_validate(values)
