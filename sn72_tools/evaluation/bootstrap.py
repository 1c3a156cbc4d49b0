"""Intervals by resampling: how sure a figure is, from the data it was measured on.

Every decision that learning makes (use a threshold map or not, exit early or not, pool or keep one expert,
promote a candidate or not) compares two sets of answers to the same images. The comparison is *paired*: both
sides are resampled with the same images, so the noise both share (easy and hard images) cancels and the
interval is the one of the difference. Resampling is stratified by label: each replicate keeps the set's count
of each class, as validators' uniform labels would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sn72_tools.evaluation.scoring import mcc_of_counts

RowMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (labels, answers01), both (rows, n) -> (rows,)


@dataclass(frozen=True)
class Interval:
    """A figure on the whole set, and the central `confidence` share of its resampled values."""

    estimate: float
    low: float
    high: float
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self, digits: int = 3) -> str:
        return (f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] "
                f"({self.confidence:.0%})")

    @property
    def above_zero(self) -> bool:
        """Better beyond noise: the whole interval lies above 0."""
        return self.low > 0.0

    @property
    def below_zero(self) -> bool:
        return self.high < 0.0


def stratified_indices(labels: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """(rounds, n) row indices: each row draws, with replacement, as many images of each class as the set has."""
    y = np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    rows = np.empty((rounds, y.size), dtype=np.int64)
    start = 0
    for c in (0, 1):
        members = np.flatnonzero(y == c)
        if members.size:
            rows[:, start:start + members.size] = members[rng.integers(0, members.size, (rounds, members.size))]
            start += members.size
    return rows


def mcc_rows(labels: np.ndarray, answers01: np.ndarray) -> np.ndarray:
    """MCC of each row (0 where undefined), as validators compute it on binarised answers."""
    tp = ((answers01 == 1) & (labels == 1)).sum(axis=1)
    tn = ((answers01 == 0) & (labels == 0)).sum(axis=1)
    fp = ((answers01 == 1) & (labels == 0)).sum(axis=1)
    fn = ((answers01 == 0) & (labels == 1)).sum(axis=1)
    return np.asarray(mcc_of_counts(tn, fp, fn, tp), dtype=float)


def accuracy_rows(labels: np.ndarray, answers01: np.ndarray) -> np.ndarray:
    return np.asarray((answers01 == labels).mean(axis=1), dtype=float)


ROW_METRICS: dict[str, RowMetric] = {"mcc": mcc_rows, "accuracy": accuracy_rows}


def _interval(estimate: float, samples: np.ndarray, confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return Interval(float(estimate), float(low), float(high), confidence)


def metric_interval(labels: np.ndarray, answers01: np.ndarray, metric: str = "mcc", *, rounds: int = 2000,
                    confidence: float = 0.95, seed: int = 0) -> Interval:
    """One set of binarised answers: the metric and its interval."""
    y, a = np.asarray(labels, dtype=int), np.asarray(answers01, dtype=int)
    rows = stratified_indices(y, rounds, seed)
    function = ROW_METRICS[metric]
    return _interval(float(function(y[None, :], a[None, :])[0]), function(y[rows], a[rows]), confidence)


def paired_difference(labels: np.ndarray, answers_a: np.ndarray, answers_b: np.ndarray, metric: str = "mcc", *,
                      rounds: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """metric(a) - metric(b) on the same images (binarised answers), with its paired, stratified interval."""
    y = np.asarray(labels, dtype=int)
    a, b = np.asarray(answers_a, dtype=int), np.asarray(answers_b, dtype=int)
    rows = stratified_indices(y, rounds, seed)
    function = ROW_METRICS[metric]
    estimate = float(function(y[None, :], a[None, :])[0] - function(y[None, :], b[None, :])[0])
    return _interval(estimate, function(y[rows], a[rows]) - function(y[rows], b[rows]), confidence)


def upper_bound(samples: np.ndarray, confidence: float) -> float:
    """One-sided upper `confidence` bound of resampled values."""
    return float(np.percentile(samples, confidence * 100.0))


def percentile_interval(estimate: float, samples: np.ndarray, confidence: float = 0.95) -> Interval:
    """The interval of a parameter refitted on resampled sets (the percentile bootstrap)."""
    return _interval(estimate, np.asarray(samples, dtype=float), confidence)
