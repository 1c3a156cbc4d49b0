"""The validators' arithmetic on one window of answers: np.round binarisation, MCC and accuracy.

Pure numpy (no scikit-learn), so light clients (sn72-query through sn72_tools/client.py) can use it.
Validators binarise with `np.round`, so exactly 0.5 counts as "no roadwork".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Labels = Sequence[int] | np.ndarray
Predictions = Sequence[float] | np.ndarray


def binarise(predictions: Predictions) -> np.ndarray:
    """0/1 as validators read a probability: np.round (0.5 rounds to 0, half to even)."""
    return np.round(np.asarray(predictions, dtype=float)).astype(int)


def confusion(labels: Labels, predictions: Predictions) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp) after binarisation."""
    y = np.asarray(labels, dtype=int)
    p = binarise(predictions)
    tp = int(((p == 1) & (y == 1)).sum())
    tn = int(((p == 0) & (y == 0)).sum())
    fp = int(((p == 1) & (y == 0)).sum())
    fn = int(((p == 0) & (y == 1)).sum())
    return tn, fp, fn, tp


def mcc_from_confusion(tn: float, fp: float, fn: float, tp: float) -> float:
    """Matthews correlation from counts (or weights); 0.0 where it is undefined (a class missing)."""
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def mcc_of_counts(tn: np.ndarray, fp: np.ndarray, fn: np.ndarray, tp: np.ndarray) -> np.ndarray:
    """`mcc_from_confusion` element-wise over arrays of counts (many windows or thresholds at once)."""
    tn, fp, fn, tp = (np.asarray(a, dtype=float) for a in (tn, fp, fn, tp))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (tp * tn - fp * fn) / denominator, 0.0)


def mcc(labels: Labels, predictions: Predictions) -> float:
    """Matthews correlation after validators' np.round binarisation (0.5 rounds to 0); 0 if undefined."""
    return mcc_from_confusion(*confusion(labels, predictions))


def accuracy(labels: Labels, predictions: Predictions) -> float:
    """Share of answers right after binarisation; NaN for no answers."""
    y = np.asarray(labels, dtype=int)
    if y.size == 0:
        return float("nan")
    return float((binarise(predictions) == y).mean())
