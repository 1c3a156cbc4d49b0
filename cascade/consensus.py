"""Calibrated log-odds pooling and the exit rule. Pure functions.

Each expert's probability is mapped to log-odds, calibrated (z = logit(p) / T + b) and weighted;
the pooled log-odds is the weighted sum. With calibrated, conditionally independent experts and
uniform class priors (SN72's labels are uniform) the sum is the Bayes posterior's log-odds; the
weights (fitted on labelled data) shrink experts whose errors are correlated. Raw confidences are
never averaged or multiplied.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from cascade.config import Calibration, ExpertConfig
from cascade.request import ExpertAnswer

_EPS = 1e-6
_MAX_LOGIT = 30.0  # keeps sigmoid away from exact 0/1 and sums finite


def logit(p: float) -> float:
    p = min(max(p, _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


def sigmoid(z: float) -> float:
    z = min(max(z, -_MAX_LOGIT), _MAX_LOGIT)
    return 1.0 / (1.0 + math.exp(-z))


def calibrate(p: float, calibration: Calibration) -> float:
    """Calibrated log-odds of one expert's probability."""
    return logit(p) / calibration.temperature + calibration.bias


def make_answer(expert: ExpertConfig, level: int, p: float) -> ExpertAnswer:
    return ExpertAnswer(
        expert=expert.name, level=level, probability=p, logit=calibrate(p, expert.calibration), weight=expert.weight
    )


def pooled_logit(answers: Iterable[ExpertAnswer]) -> float:
    """Weighted sum of calibrated log-odds (0.0, i.e. p = 0.5, when nothing answered)."""
    total = sum(answer.weight * answer.logit for answer in answers)
    return min(max(total, -_MAX_LOGIT), _MAX_LOGIT)


def pooled_probability(answers: Iterable[ExpertAnswer]) -> float:
    return sigmoid(pooled_logit(answers))


def is_confident(probability: float, exit_margin: float) -> bool:
    """Exit when the pooled probability is at least `exit_margin` away from 0.5 on either side."""
    return abs(probability - 0.5) >= exit_margin
