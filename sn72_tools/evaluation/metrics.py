"""Classification and calibration metrics of one set of answers, with undefined values said so.

MCC, accuracy and the confusion matrix use the validators' np.round binarisation (scoring.py); the
rest comes from scikit-learn. A metric that is undefined on the set (one class only) is `None` with
a note that says why, never a silent 0 or NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss, precision_score, recall_score, roc_auc_score

from sn72_tools.evaluation.scoring import binarise, confusion, mcc_from_confusion

ECE_BINS = 10


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width bins of the predicted probability: what was predicted against what was true."""

    edges: np.ndarray  # n_bins + 1
    counts: np.ndarray  # images per bin
    mean_predicted: np.ndarray  # NaN where a bin is empty
    fraction_positive: np.ndarray  # NaN where a bin is empty


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = ECE_BINS) -> ReliabilityBins:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed last bin: p == 1.0 belongs to the top bin.
    index = np.clip(np.digitize(probabilities, edges[1:-1], right=False), 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    sums = np.bincount(index, weights=probabilities, minlength=n_bins)
    positives = np.bincount(index, weights=labels.astype(float), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, sums / counts, np.nan)
        fraction_positive = np.where(counts > 0, positives / counts, np.nan)
    return ReliabilityBins(edges, counts, mean_predicted, fraction_positive)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Image-weighted mean |fraction positive - mean predicted| over equal-width bins."""
    bins = reliability_bins(labels, probabilities, n_bins)
    filled = bins.counts > 0
    gaps = np.abs(bins.fraction_positive[filled] - bins.mean_predicted[filled])
    return float((gaps * bins.counts[filled]).sum() / bins.counts.sum())


@dataclass
class Metrics:
    """What the report shows for one expert, one level or the deployed cascade."""

    n: int
    positives: int
    mcc: float | None
    accuracy: float
    precision: float | None
    recall: float | None
    roc_auc: float | None
    brier: float
    ece: float
    confusion: dict[str, int]  # tn, fp, fn, tp after np.round
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> Metrics:
    """Every metric of one set of answers. `labels` are 0/1, `probabilities` P(roadwork)."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    if y.size == 0:
        raise ValueError("no answers to measure")
    tn, fp, fn, tp = confusion(y, p)
    notes: list[str] = []
    classes = np.unique(y)
    both_classes = classes.size == 2
    mcc: float | None
    if both_classes:
        mcc = mcc_from_confusion(tn, fp, fn, tp)
        predicted = np.unique(binarise(p))
        if predicted.size == 1:
            notes.append(f"every answer rounds to {int(predicted[0])}: validators score MCC 0 for a constant answer")
    else:
        mcc = None
        notes.append(f"MCC undefined: the labels hold only class {int(classes[0])} (validators would score 0)")
    predicted_positive = tp + fp
    precision: float | None = None
    if predicted_positive:
        precision = float(precision_score(y, binarise(p), zero_division=0))
    else:
        notes.append("precision undefined: no answer rounds to 1")
    recall: float | None = None
    if tp + fn:
        recall = float(recall_score(y, binarise(p), zero_division=0))
    else:
        notes.append("recall undefined: no image is labelled 1")
    roc_auc = float(roc_auc_score(y, p)) if both_classes else None
    if not both_classes:
        notes.append("ROC AUC undefined: one class only")
    return Metrics(
        n=int(y.size),
        positives=int(y.sum()),
        mcc=mcc,
        accuracy=float((tn + tp) / y.size),
        precision=precision,
        recall=recall,
        roc_auc=roc_auc,
        brier=float(brier_score_loss(y, p, pos_label=1)),
        ece=expected_calibration_error(y, p),
        confusion={"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        notes=notes,
    )
