"""The validators' reward, estimated by resampling the windows they score.

Per validator and round (natix validator `get_rewards` and `MinerPerformanceTracker`, SN72.md):
    reward = (0.5 * MCC(last 100 rounds) + 0.5 * accuracy(last 10 rounds)) ** 3
- every answer is binarised with np.round (0.5 -> 0);
- a late answer or an error comes back as -1: that round's reward is 0, and the -1 stays in the
  windows but is left out of both metrics (a window of 100 rounds may hold fewer answers);
- MCC is max(0, MCC), and 0 unless both classes appear in the window's labels;
- an empty window scores 0.
An answer from the prior is an ordinary answer (the prior, binarised). Labels are uniform 0/1, so
each resampled round draws its label with probability 1/2, then an image of that class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cascade.evaluation.scoring import mcc_of_counts

MCC_WINDOW = 100
ACCURACY_WINDOW = 10
LATE = -1.0  # what a late answer or an error looks like to a validator


@dataclass(frozen=True)
class RewardEstimate:
    mean: float
    p5: float  # 5th percentile over resampled windows: a bad stretch
    trials: int
    late_rate: float
    prior_rate: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _window_mcc(labels: np.ndarray, answers: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row-wise max(0, MCC) over the valid entries; 0 where a row's valid labels hold one class."""
    tp = ((answers == 1) & (labels == 1) & valid).sum(axis=1)
    tn = ((answers == 0) & (labels == 0) & valid).sum(axis=1)
    fp = ((answers == 1) & (labels == 0) & valid).sum(axis=1)
    fn = ((answers == 0) & (labels == 1) & valid).sum(axis=1)
    return np.maximum(mcc_of_counts(tn, fp, fn, tp), 0.0)


def _window_accuracy(labels: np.ndarray, answers: np.ndarray, valid: np.ndarray) -> np.ndarray:
    counted = valid.sum(axis=1)
    right = ((answers == labels) & valid).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, right / np.maximum(counted, 1), 0.0)


def window_rewards(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """The reward of each row's last round, as a validator computes it.

    `labels` and `predictions` are (rows, rounds) with the newest round last; a prediction of -1 is a
    late answer or an error. Rounds beyond the last 100 are ignored.
    """
    labels = np.asarray(labels, dtype=int)[:, -MCC_WINDOW:]
    predictions = np.asarray(predictions, dtype=float)[:, -MCC_WINDOW:]
    valid = predictions != LATE
    answers = np.where(valid, np.round(predictions), -1).astype(int)
    mcc = _window_mcc(labels, answers, valid)
    accuracy = _window_accuracy(labels[:, -ACCURACY_WINDOW:], answers[:, -ACCURACY_WINDOW:],
                                valid[:, -ACCURACY_WINDOW:])
    reward = (0.5 * mcc + 0.5 * accuracy) ** 3
    return np.where(valid[:, -1], reward, 0.0)


def estimate_reward(
    labels: np.ndarray,
    predictions: np.ndarray,
    *,
    late_rate: float = 0.0,
    prior_rate: float = 0.0,
    prior: float = 0.5,
    trials: int = 2000,
    seed: int = 0,
) -> RewardEstimate | None:
    """Mean and 5th percentile of the per-round reward over `trials` resampled 100-round histories.

    Each round is late (-1) with probability `late_rate`, otherwise answered from the prior with
    probability `prior_rate`, otherwise the recorded answer of the image drawn. None when the set
    lacks a class (uniform labels cannot be drawn from it).
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(predictions, dtype=float)
    by_class = [np.flatnonzero(y == c) for c in (0, 1)]
    if any(idx.size == 0 for idx in by_class):
        return None
    rng = np.random.default_rng(seed)
    shape = (trials, MCC_WINDOW)
    drawn_labels = rng.integers(0, 2, shape)
    picks = np.where(
        drawn_labels == 1,
        by_class[1][rng.integers(0, by_class[1].size, shape)],
        by_class[0][rng.integers(0, by_class[0].size, shape)],
    )
    answers = p[picks]
    answers = np.where(rng.random(shape) < prior_rate, prior, answers)
    answers = np.where(rng.random(shape) < late_rate, LATE, answers)
    rewards = window_rewards(drawn_labels, answers)
    return RewardEstimate(
        mean=float(rewards.mean()),
        p5=float(np.percentile(rewards, 5)),
        trials=trials,
        late_rate=late_rate,
        prior_rate=prior_rate,
    )
