"""The choices a fit makes, each taken only when the data shows it helps beyond noise.

Without evidence, every choice falls back to the raw decision:
- **structure**: pool every expert, or answer with the best single expert (calibrated) alone. Pooling is kept
  only when its cross-validated MCC beats the best expert's beyond noise (paired interval above 0);
- **threshold map** per level: the MCC-best cut is moved onto 0.5 only when, chosen on the other folds, it beats
  0.5 on the held fold beyond noise; otherwise 0.5 stays (no map);
- **exit margins**: the cheapest margins whose MCC loss against running every level stays within
  `max_mcc_loss` at the upper confidence bound (paired resampling), not just on average; otherwise every
  level runs (margin 0.5);
- every fitted number carries its interval from refitting on resampled sets.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from sn72_tools.evaluation import replay
from sn72_tools.evaluation.bootstrap import (
    Interval,
    paired_difference,
    percentile_interval,
    stratified_indices,
    upper_bound,
)
from sn72_tools.evaluation.fit_parameters import (
    THRESHOLD_RANGE,
    Parameters,
    balanced_mcc_rows,
    balanced_weights,
    best_threshold,
    fit_parameters,
    single_expert,
    threshold_map,
    weighted_mcc,
)

MARGIN_GRID = np.round(np.arange(0.0, 0.5 + 1e-9, 0.025), 3)
EXHAUSTIVE_LIMIT = 10_000  # margin combinations searched exhaustively; beyond, coordinate descent
MARGIN_CHECKS = 25  # cheapest point-feasible margin sets whose loss bound is checked by resampling


@dataclass(frozen=True)
class FitSettings:
    """How much evidence each choice needs (sn72-eval --fit's flags)."""

    max_mcc_loss: float = 0.01
    folds: int = 5
    bootstrap: int = 200
    confidence: float = 0.95
    seed: int = 0


@dataclass
class Structure:
    kind: str  # "pooled" | "single"
    column: int | None  # the expert answering alone (single)
    report: dict[str, Any] = field(default_factory=dict)


def _folds(labels: np.ndarray, settings: FitSettings) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedKFold(n_splits=settings.folds, shuffle=True, random_state=settings.seed)
    return list(splitter.split(np.zeros(labels.size), labels))


@dataclass
class CrossValidated:
    """Out-of-fold answers: each image answered by parameters fitted without it."""

    pooled: np.ndarray  # (n, levels) before any threshold map
    experts: np.ndarray  # (n, experts) each expert's calibrated probability
    mapped_last: dict[int, np.ndarray]  # level -> out-of-fold answer with the threshold chosen on the other folds
    thresholds: list[list[float]]  # per fold, per level


def cross_validate(level_columns: list[list[int]], raw: np.ndarray, labels: np.ndarray, settings: FitSettings,
                   column: int | None = None) -> CrossValidated:
    """Out-of-fold answers of the pooled structure, or of expert `column` alone."""
    n, levels = labels.size, len(level_columns)
    pooled = np.empty((n, levels))
    experts = np.empty(raw.shape)
    mapped = {level: np.empty(n) for level in range(levels)}
    thresholds = []
    for train, held in _folds(labels, settings):
        parameters = fit_parameters(level_columns, raw[train], labels[train])
        if column is not None:
            parameters = single_expert(parameters, column)
        in_sample = parameters.pooled(raw[train])
        weights = balanced_weights(labels[train])
        fold_thresholds = [best_threshold(labels[train], in_sample[:, level], weights) for level in range(levels)]
        thresholds.append(fold_thresholds)
        pooled[held] = parameters.pooled(raw[held])
        experts[held] = 1.0 / (1.0 + np.exp(-parameters.calibrated(raw[held])))
        for level in range(levels):
            mapped[level][held] = threshold_map(pooled[held, level], fold_thresholds[level])
    return CrossValidated(pooled, experts, mapped, thresholds)


def _answers(probabilities: np.ndarray) -> np.ndarray:
    return np.round(probabilities).astype(int)  # validators' rounding: 0.5 is "no roadwork"


def choose_structure(names: list[str], labels: np.ndarray, cv: CrossValidated, settings: FitSettings) -> Structure:
    """Pool, unless pooling does not beat the best single expert beyond noise (cross-validated).

    The expert that then answers alone is the deepest one (later levels hold the stronger, dearer models) whose
    MCC is not below the best one's beyond noise: a cheap expert that merely won by chance does not take over.
    """
    weights = balanced_weights(labels)
    pooled = _answers(cv.pooled[:, -1])
    single = {name: _answers(cv.experts[:, j]) for j, name in enumerate(names)}
    scores = {name: weighted_mcc(labels, answers, weights) for name, answers in single.items()}
    best = max(scores, key=lambda name: scores[name])
    paired: dict[str, Any] = {"rounds": settings.bootstrap, "confidence": settings.confidence, "seed": settings.seed}
    for name in reversed(names):  # deepest first
        if not paired_difference(labels, single[best], single[name], **paired).above_zero:
            best = name
            break
    report: dict[str, Any] = {"cv_mcc": {"pooled": weighted_mcc(labels, pooled, weights), "experts": scores},
                              "best_single": best}
    if len(names) == 1:
        return Structure("pooled", None, {**report, "reason": "one expert: nothing to choose"})
    difference = paired_difference(labels, pooled, single[best], **paired)
    report["pooled_minus_best"] = difference.as_dict()
    if difference.above_zero:
        return Structure("pooled", None, {**report, "reason": f"pooling beats {best} alone beyond noise "
                                                              f"(MCC {difference.text()}, cross-validated)"})
    return Structure("single", names.index(best), {
        **report, "reason": f"pooling does not beat {best} alone beyond noise (MCC {difference.text()}, "
                            f"cross-validated): {best} answers alone"})


def choose_threshold(level: int, labels: np.ndarray, fitted: float, cv: CrossValidated,
                     settings: FitSettings) -> tuple[float, dict[str, Any]]:
    """The fitted threshold if, chosen on the other folds, it beats 0.5 on held folds beyond noise; else 0.5."""
    if fitted == 0.5:
        return 0.5, {"fitted": 0.5, "used": 0.5, "reason": "0.5 is already the best cut"}
    gain = paired_difference(labels, _answers(cv.mapped_last[level]), _answers(cv.pooled[:, level]),
                             rounds=settings.bootstrap, confidence=settings.confidence, seed=settings.seed + level)
    report = {"fitted": fitted, "cv_gain_over_half": gain.as_dict(),
              "fold_thresholds": [fold[level] for fold in cv.thresholds]}
    if gain.above_zero:
        return fitted, {**report, "used": fitted, "reason": f"beats 0.5 beyond noise (MCC {gain.text()})"}
    return 0.5, {**report, "used": 0.5, "reason": f"does not beat 0.5 beyond noise (MCC {gain.text()}): no map"}


def choose_single_cut(level: int, labels: np.ndarray, fitted: float, cv: CrossValidated, raw_outputs: np.ndarray,
                      raw_cut: float, settings: FitSettings) -> tuple[float, dict[str, Any]]:
    """Where one expert answering alone decides: its own raw decision (p > 0.5) unless the data shows better.

    Calibration (temperature, bias) moves the point where the calibrated answer crosses 0.5; `raw_cut` is the
    calibrated value at the expert's raw 0.5, so a threshold map onto it keeps the raw decision exactly. The
    calibrated 0.5 and the MCC-best cut each replace it only when they beat the raw decision on held folds beyond
    noise (the best cut first).
    """
    raw = _answers(np.asarray(raw_outputs) > 0.5)
    paired: dict[str, Any] = {"rounds": settings.bootstrap, "confidence": settings.confidence,
                              "seed": settings.seed + level}
    best = paired_difference(labels, _answers(cv.mapped_last[level]), raw, **paired)
    calibrated = paired_difference(labels, _answers(cv.pooled[:, level]), raw, **paired)
    report = {"fitted": fitted, "raw_cut": raw_cut, "best_cut_over_raw": best.as_dict(),
              "calibrated_over_raw": calibrated.as_dict(), "fold_thresholds": [fold[level] for fold in cv.thresholds]}
    low, high = THRESHOLD_RANGE
    if fitted != 0.5 and best.above_zero:
        return fitted, {**report, "used": fitted, "reason": f"the best cut beats the raw decision beyond noise "
                                                            f"(MCC {best.text()})"}
    if calibrated.above_zero:
        return 0.5, {**report, "used": 0.5, "reason": f"the calibrated 0.5 beats the raw decision beyond noise "
                                                      f"(MCC {calibrated.text()})"}
    cut = float(np.clip(raw_cut, low, high))
    return cut, {**report, "used": cut, "reason": f"neither the calibrated 0.5 ({calibrated.text()}) nor the best cut "
                                                  f"({best.text()}) beats the raw decision beyond noise: the expert's "
                                                  "own p > 0.5 decides"}


@dataclass(frozen=True)
class MarginChoice:
    margins: list[float]
    reference_mcc: float  # every level run
    mcc: float
    cost_s: float  # expected expert-seconds per image with these margins
    all_levels_cost_s: float
    loss_upper: float = 0.0  # upper confidence bound of the MCC lost against running every level
    reason: str = ""


def _evaluate(margins: tuple[float, ...], probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray,
              costs: np.ndarray) -> tuple[float, float, np.ndarray]:
    exits = replay.exit_levels([*margins, 0.5], probabilities)
    answers = _answers(replay.answers_at(probabilities, exits))
    return weighted_mcc(labels, answers, weights), float((weights * costs[exits]).sum() / weights.sum()), answers


def _candidates(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray, costs: np.ndarray,
                max_loss: float, reference: float) -> list[tuple[float, float, tuple[float, ...]]]:
    """(cost, mcc, margins) of point-feasible margin sets, cheapest first (ties: higher MCC, wider margins)."""
    free = probabilities.shape[1] - 1

    def point(margins: tuple[float, ...]) -> tuple[float, float, tuple[float, ...]]:
        mcc, cost, _ = _evaluate(margins, probabilities, labels, weights, costs)
        return cost, mcc, margins

    if len(MARGIN_GRID) ** free <= EXHAUSTIVE_LIMIT:
        scored = [point(m) for m in itertools.product(MARGIN_GRID.tolist(), repeat=free)]
    else:  # coordinate descent from "never exit early", keeping every point it visits
        best, scored = (0.5,) * free, []
        for _ in range(3):
            for index in range(free):
                row = [point((*best[:index], m, *best[index + 1:])) for m in MARGIN_GRID.tolist()]
                scored += row
                feasible = [r for r in row if r[1] >= reference - max_loss - 1e-12]
                best = min(feasible, key=lambda r: (r[0], -r[1], -sum(r[2])))[2]
    feasible = [r for r in scored if r[1] >= reference - max_loss - 1e-12]
    return sorted(set(feasible), key=lambda r: (r[0], -r[1], -sum(r[2])))


def choose_margins(probabilities: np.ndarray, labels: np.ndarray, costs: np.ndarray,
                   settings: FitSettings) -> MarginChoice:
    """Cheapest margins whose MCC loss against every level stays within the bound at its upper confidence limit."""
    weights = balanced_weights(labels)
    levels = probabilities.shape[1]
    reference_answers = _answers(probabilities[:, -1])
    reference = weighted_mcc(labels, reference_answers, weights)
    all_cost = float(costs[-1])
    never = MarginChoice([0.5] * levels, reference, reference, all_cost, all_cost, 0.0)
    if levels == 1:
        return MarginChoice([0.5], reference, reference, all_cost, all_cost, 0.0, "one level")
    rows = stratified_indices(labels, settings.bootstrap, settings.seed)
    reference_rows = balanced_mcc_rows(labels[rows], reference_answers[rows])
    for cost, mcc, margins in _candidates(probabilities, labels, weights, costs, settings.max_mcc_loss,
                                          reference)[:MARGIN_CHECKS]:
        if all(m == 0.5 for m in margins):
            break
        answers = _evaluate(margins, probabilities, labels, weights, costs)[2]
        loss = upper_bound(reference_rows - balanced_mcc_rows(labels[rows], answers[rows]), settings.confidence)
        if loss <= settings.max_mcc_loss + 1e-12:
            return MarginChoice([*margins, 0.5], reference, mcc, cost, all_cost, loss,
                                f"the cheapest margins whose MCC loss is within {settings.max_mcc_loss} at the "
                                f"{settings.confidence:.0%} upper bound ({loss:.4f})")
    return MarginChoice(never.margins, reference, reference, all_cost, all_cost, 0.0,
                        f"no early exit keeps the MCC loss within {settings.max_mcc_loss} at the "
                        f"{settings.confidence:.0%} upper bound on {labels.size} images: every level runs")


def parameter_intervals(level_columns: list[list[int]], raw: np.ndarray, labels: np.ndarray, full: Parameters,
                        thresholds: list[float], settings: FitSettings) -> dict[str, Any]:
    """Each fitted number with the interval of its refits on stratified resamples of the fit set."""
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(float(value))

    for rows in stratified_indices(labels, settings.bootstrap, settings.seed + 7):
        refit = fit_parameters(level_columns, raw[rows], labels[rows])
        pooled = refit.pooled(raw[rows])
        weights = balanced_weights(labels[rows])
        for j in range(raw.shape[1]):
            add(f"temperature/{j}", refit.temperatures[j])
            add(f"bias/{j}", refit.biases[j])
        for level, columns in enumerate(level_columns):
            add(f"intercept/{level}", refit.intercepts[level])
            add(f"threshold/{level}", best_threshold(labels[rows], pooled[:, level], weights))
            for k, column in enumerate(columns):
                add(f"weight/{level}/{column}", refit.level_weights[level][k])

    def interval(key: str, estimate: float) -> Interval:
        return percentile_interval(estimate, np.array(samples[key]), settings.confidence)

    experts = {j: {"temperature": interval(f"temperature/{j}", full.temperatures[j]).as_dict(),
                   "bias": interval(f"bias/{j}", full.biases[j]).as_dict()} for j in range(raw.shape[1])}
    levels = [{"intercept": interval(f"intercept/{level}", full.intercepts[level]).as_dict(),
               "threshold": interval(f"threshold/{level}", thresholds[level]).as_dict(),
               "weights": {column: interval(f"weight/{level}/{column}", full.level_weights[level][k]).as_dict()
                           for k, column in enumerate(columns)}}
              for level, columns in enumerate(level_columns)]
    return {"experts": experts, "levels": levels, "resamples": settings.bootstrap}


def single_expert_margins(level_columns: list[list[int]], column: int) -> list[float]:
    """Levels before the expert's never exit; its level always does (unless it is the last)."""
    home = next(level for level, columns in enumerate(level_columns) if column in columns)
    last = len(level_columns) - 1
    return [0.5 if level != home or level == last else 0.0 for level in range(len(level_columns))]
