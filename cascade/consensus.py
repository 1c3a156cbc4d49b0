"""Calibrated log-odds pooling and the exit rule: pure functions, and `Pooling`, which the engine calls.

Each expert's probability is mapped to log-odds, calibrated (z = logit(p) / T + b) and weighted;
the pooled log-odds is the weighted sum. With calibrated, conditionally independent experts and
uniform class priors (SN72's labels are uniform) the sum is the Bayes posterior's log-odds; the
weights (fitted on labelled data) shrink experts whose errors are correlated. Raw confidences are
never averaged or multiplied.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cascade.calibration import threshold_map
from cascade.config import Calibration, CascadeConfig, ExpertConfig
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


@dataclass(frozen=True)
class LevelPooling:
    """How one level pools every answer so far, and when its answer may leave."""

    weights: Mapping[str, float] | None  # None: each answer's own weight (the YAML's per-expert `weight`)
    intercept: float
    threshold: float  # the pooled value mapped to 0.5 (0.5: no map)
    exit_margin: float


class Pooling:
    """The one pooling and exit rule the engine (and the eval's replay) calls.

    Without a calibration file this is exactly `pooled_probability` and `is_confident` with the YAML's
    per-expert weights and per-level margins. With one, each level has its own weights and intercept
    over the calibrated log-odds answered so far, then its threshold map, then its exit margin.
    """

    def __init__(self, levels: Sequence[LevelPooling]) -> None:
        self.levels = tuple(levels)

    @classmethod
    def from_config(cls, cascade: CascadeConfig) -> Pooling:
        fitted = cascade.fitted()
        if cascade.calibration is not None and fitted is None:
            raise ValueError(f"calibration {cascade.calibration} is named but not loaded (use load_cascade)")
        if fitted is None:
            return cls([LevelPooling(None, 0.0, 0.5, level.exit_margin) for level in cascade.levels])
        # The margins are the levels' own: load_cascade already put the fitted ones there.
        return cls([LevelPooling(dict(fit.weights), fit.intercept, fit.threshold, level.exit_margin)
                    for fit, level in zip(fitted.levels, cascade.levels, strict=True)])

    def level_logit(self, level_index: int, answers: Iterable[ExpertAnswer]) -> float:
        """Pooled log-odds before the threshold map (clamped like `pooled_logit`)."""
        level = self.levels[level_index]
        if level.weights is None:
            return pooled_logit(answers)
        # NOTE: an expert that failed or timed out adds nothing (log-odds 0), though the weights were
        # fitted with it answering; the level's answer is then a little less sure than it should be.
        total = level.intercept + sum(level.weights.get(a.expert, 0.0) * a.logit for a in answers)
        return min(max(total, -_MAX_LOGIT), _MAX_LOGIT)

    def level_probability(self, level_index: int, answers: Iterable[ExpertAnswer]) -> float:
        """The answer this level gives: pooled, then mapped so its MCC-best threshold sits on 0.5."""
        return threshold_map(sigmoid(self.level_logit(level_index, answers)), self.levels[level_index].threshold)

    def should_exit(self, level_index: int, probability: float) -> bool:
        return is_confident(probability, self.levels[level_index].exit_margin)
