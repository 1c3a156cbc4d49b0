"""The training loss: focal loss and label smoothing in one expression, and the `Trainer` that uses it.

transformers' `label_smoothing_factor` applies only to the model's own loss (its `LabelSmoother`), never to a custom
one, so focal loss with smoothing cannot be had from `TrainingArguments`. Here both are one loss:

    loss_i = - sum_c  w_c * q_ic * (1 - p_ic) ** gamma * log p_ic,   q_ic = (1 - eps) * [c == y_i] + eps / K

with p the softmax of the logits, K the classes, eps the smoothing, w the class weights (1 without weighting) and
gamma the focal exponent. At gamma 0 this is exactly `F.cross_entropy(weight=w, label_smoothing=eps)` per image
(PyTorch spreads the smoothing mass over the weighted classes the same way), so the recipes without focal loss
train as before. The batch's sum is divided by the images of the whole accumulated step when the Trainer says how
many (`num_items_in_batch`), else by the images of the batch: the loss is already scaled for gradient accumulation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

SAMPLE_WEIGHT = "sample_weight"  # optional batch key: each image's share of the loss (1 when absent)


def focal_smoothed_loss(logits: torch.Tensor, labels: torch.Tensor, *, gamma: float = 0.0,
                        smoothing: float = 0.0, weight: torch.Tensor | None = None,
                        reduction: str = "sum") -> torch.Tensor:
    """Focal loss with label smoothing and class weights (module docstring); `reduction` sum, mean or none."""
    if gamma < 0 or not 0 <= smoothing < 1:
        raise ValueError(f"gamma must be >= 0 and smoothing in [0, 1), got {gamma} and {smoothing}")
    log_p = F.log_softmax(logits.float(), dim=-1)
    classes = log_p.shape[-1]
    target = torch.full_like(log_p, smoothing / classes)
    target.scatter_(-1, labels.long().unsqueeze(-1), 1.0 - smoothing + smoothing / classes)
    if weight is not None:
        target = target * weight.to(log_p.device, log_p.dtype)
    modulation = (1.0 - log_p.exp()).clamp(min=0.0).pow(gamma) if gamma else torch.ones_like(log_p)
    per_image = -(target * modulation * log_p).sum(dim=-1)
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.mean()
    return per_image.sum()


class RecipeTrainer(Trainer):  # type: ignore[misc]
    """transformers' Trainer with the recipe's loss (focal exponent, label smoothing, class weights)."""

    loss_is_scaled_for_ga = True  # divided by the accumulated step's images (num_items_in_batch) below

    def __init__(self, *args: Any, focal_gamma: float = 0.0, label_smoothing: float = 0.0,
                 class_weights: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        sample_weight = inputs.pop(SAMPLE_WEIGHT, None)  # a per-image share of the loss, when the set gives one
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        per_image = focal_smoothed_loss(logits, labels, gamma=self.focal_gamma, smoothing=self.label_smoothing,
                                        weight=self.class_weights, reduction="none")
        if sample_weight is not None:
            per_image = per_image * sample_weight.to(per_image.device, per_image.dtype)
        total = per_image.sum()
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        loss = total / count
        return (loss, outputs) if return_outputs else loss
