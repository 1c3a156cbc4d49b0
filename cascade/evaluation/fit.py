"""Fit a cascade to the validators' score on recorded outputs (scikit-learn); writes a calibration file.

Steps, all on the fit split only, every class weighted equally (validators' labels are uniform, the
set's may not be):
1. per expert: logistic regression of the label on the raw log-odds -> temperature and bias;
2. per level: logistic regression on the calibrated log-odds of every expert answered up to it ->
   weights and an intercept, so each level's pooled answer is calibrated on its own;
3. per level: the MCC-best threshold of that pooled answer, which the level's monotone map puts on 0.5;
4. exit margins: the cheapest (expected expert-seconds) with at most `max_mcc_loss` MCC lost against
   running every level, searched on a grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from cascade import consensus
from cascade.calibration import CalibrationFile, ExpertFit, FitSource, LevelFit, digest, model_reference
from cascade.config import CascadeConfig, apply_calibration, base_version
from cascade.evaluation import replay
from cascade.evaluation.datasets import EvalError
from cascade.evaluation.scoring import binarise, mcc_from_confusion, mcc_of_counts

MARGIN_GRID = np.round(np.arange(0.0, 0.5 + 1e-9, 0.025), 3)
EXHAUSTIVE_LIMIT = 10_000  # margin combinations searched exhaustively; beyond, coordinate descent
TEMPERATURE_RANGE = (0.01, 100.0)
THRESHOLD_RANGE = (0.02, 0.98)
MIN_PER_CLASS = 5


def raw_logits(outputs: np.ndarray) -> np.ndarray:
    """Log-odds exactly as `consensus.logit` clips them."""
    p = np.clip(outputs, consensus._EPS, 1.0 - consensus._EPS)
    return np.log(p / (1.0 - p))


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sample weights that give each class half the total: fitting for uniform labels."""
    counts = np.bincount(labels, minlength=2).astype(float)
    return labels.size / (2.0 * counts[labels])


def weighted_mcc(labels: np.ndarray, answers01: np.ndarray, weights: np.ndarray) -> float:
    def mass(answer: int, label: int) -> float:
        return float(weights[(answers01 == answer) & (labels == label)].sum())

    return mcc_from_confusion(mass(0, 0), mass(1, 0), mass(0, 1), mass(1, 1))


def fit_expert(raw: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[float, float, bool]:
    """(temperature, bias, informative) with calibrated log-odds = raw / temperature + bias.

    The regression runs on the standardised log-odds, so its regularisation does not depend on how
    wide a model's raw outputs happen to be (a random-weight model's span a hundredth of a unit).
    """
    scale = float(raw.std()) or 1.0
    centre = float(raw.mean())
    model = LogisticRegression(C=1.0).fit(((raw - centre) / scale)[:, None], labels, sample_weight=weights)
    slope = float(model.coef_[0, 0]) / scale
    intercept = float(model.intercept_[0]) - slope * centre
    low, high = TEMPERATURE_RANGE
    # NOTE: a slope <= 0 (an expert no better than chance, or inverted) gets the largest temperature:
    # it then says almost nothing, rather than the opposite of what it sees. An inverted expert is a
    # configuration error (its positive labels) to fix, not a signal to exploit silently.
    if slope <= 1.0 / high:
        return high, float(np.clip(float(model.intercept_[0]), -20.0, 20.0)), False
    return float(np.clip(1.0 / slope, low, high)), float(np.clip(intercept, -20.0, 20.0)), True


def fit_level(calibrated: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[list[float], float]:
    """Pooling weights (one per column) and an intercept."""
    model = LogisticRegression(C=1.0).fit(calibrated, labels, sample_weight=weights)
    return np.clip(model.coef_[0], -100.0, 100.0).tolist(), float(np.clip(model.intercept_[0], -30.0, 30.0))


def best_threshold(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The threshold t maximising (weighted) MCC of "roadwork iff p > t"; ties go to the t nearest 0.5."""
    w = np.ones(labels.size) if weights is None else weights
    order = np.argsort(-probabilities, kind="stable")
    p, y, w = probabilities[order], labels[order], w[order]
    positives, negatives = float((w * y).sum()), float((w * (1 - y)).sum())
    tp = np.concatenate([[0.0], np.cumsum(w * y)])  # top-k answered 1, for k = 0..n
    fp = np.concatenate([[0.0], np.cumsum(w * (1 - y))])
    fn, tn = np.maximum(positives - tp, 0.0), np.maximum(negatives - fp, 0.0)  # cumsum rounding
    mcc = mcc_of_counts(tn, fp, fn, tp)
    k = np.arange(p.size + 1)
    cut_ok = np.ones(p.size + 1, dtype=bool)
    cut_ok[1:-1] = p[:-1] > p[1:]  # a cut between equal values is not a threshold
    padded = np.concatenate([[1.0], p, [0.0]])
    thresholds = np.clip((padded[k] + padded[k + 1]) / 2.0, *THRESHOLD_RANGE)
    best = mcc[cut_ok].max()
    at_half = int((p > 0.5).sum())  # the cut validators' rounding makes
    if best <= mcc[at_half] + 1e-12:
        return 0.5  # no threshold does better than 0.5: no map
    candidates = thresholds[cut_ok & (mcc >= best - 1e-12)]
    return float(candidates[np.argmin(np.abs(candidates - 0.5))])


@dataclass(frozen=True)
class MarginChoice:
    margins: list[float]
    reference_mcc: float  # every level run
    mcc: float
    cost_s: float  # expected expert-seconds per image with these margins
    all_levels_cost_s: float


def _evaluate(margins: tuple[float, ...], probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray,
              costs: np.ndarray) -> tuple[float, float]:
    exits = replay.exit_levels([*margins, 0.5], probabilities)
    answers = binarise(replay.answers_at(probabilities, exits))
    return weighted_mcc(labels, answers, weights), float((weights * costs[exits]).sum() / weights.sum())


def choose_margins(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray, costs: np.ndarray,
                   max_mcc_loss: float) -> MarginChoice:
    """Cheapest margins with MCC >= MCC(every level) - max_mcc_loss; ties: higher MCC, then wider margins."""
    levels = probabilities.shape[1]
    reference = weighted_mcc(labels, binarise(probabilities[:, -1]), weights)
    all_cost = float(costs[-1])
    if levels == 1:
        return MarginChoice([0.5], reference, reference, all_cost, all_cost)

    def key(margins: tuple[float, ...]) -> tuple[float, float, float]:
        mcc, cost = _evaluate(margins, probabilities, labels, weights, costs)
        feasible = mcc >= reference - max_mcc_loss - 1e-12
        return (cost if feasible else np.inf, -mcc, -sum(margins))

    free = levels - 1
    if len(MARGIN_GRID) ** free <= EXHAUSTIVE_LIMIT:
        best = min(itertools.product(MARGIN_GRID.tolist(), repeat=free), key=key)
    else:
        best = (0.5,) * free  # never exit early: feasible by construction; then loosen one level at a time
        for _ in range(3):
            for index in range(free):
                best = min(((*best[:index], m, *best[index + 1:]) for m in MARGIN_GRID.tolist()), key=key)
    mcc, cost = _evaluate(best, probabilities, labels, weights, costs)
    return MarginChoice([*best, 0.5], reference, mcc, cost, all_cost)


@dataclass(frozen=True)
class FitResult:
    calibration: CalibrationFile
    text: str  # the file's exact contents (its hash is in the fitted cascade's version)
    cascade: CascadeConfig  # a copy of the cascade serving this calibration
    margins: MarginChoice


def _with_calibration(cascade: CascadeConfig, calibration: CalibrationFile, path: Path, text: str) -> CascadeConfig:
    fitted = cascade.model_copy(deep=True)
    fitted.calibration = path
    apply_calibration(fitted, calibration, digest(text.encode()))
    return fitted


def fit_cascade(cascade: CascadeConfig, experts: list[str], outputs: np.ndarray, labels: np.ndarray, *,
                source: FitSource, expert_seconds: dict[str, float], path: Path) -> FitResult:
    """Fit every parameter on (outputs, labels); `path` is where the calibration file will be written."""
    counts = np.bincount(labels, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        raise EvalError(f"fitting needs at least {MIN_PER_CLASS} images of each class in the fit split, "
                        f"got {int(counts[0])} of class 0 and {int(counts[1])} of class 1")
    source = source.model_copy(deep=True)  # notes are added below
    weights = balanced_weights(labels)
    raw = raw_logits(outputs)
    by_expert = {e.name: e for e in cascade.experts()}
    expert_fits = {}
    calibrated = np.empty_like(raw)
    for j, name in enumerate(experts):
        temperature, bias, informative = fit_expert(raw[:, j], labels, weights)
        if not informative:
            source.notes.append(f"expert {name} answers no better than chance (or inverted) on the fit split: "
                                f"given the largest temperature; check its positive labels")
        config = by_expert[name]
        expert_fits[name] = ExpertFit(temperature=temperature, bias=bias, backend=config.backend,
                                      model=model_reference(config.model))
        calibrated[:, j] = raw[:, j] / temperature + bias
    column = {name: j for j, name in enumerate(experts)}
    level_fits, answered = [], []
    for level in cascade.levels:
        answered += [e.name for e in level.experts]
        level_weights, intercept = fit_level(calibrated[:, [column[n] for n in answered]], labels, weights)
        level_fits.append(LevelFit(name=level.name, weights=dict(zip(answered, level_weights, strict=True)),
                                   intercept=intercept, exit_margin=0.5))
    draft = CalibrationFile(created=datetime.now(UTC).isoformat(timespec="seconds"),
                            cascade_version=base_version(cascade.version), source=source, experts=expert_fits,
                            levels=level_fits)

    def replayed(calibration: CalibrationFile) -> np.ndarray:
        fitted = _with_calibration(cascade, calibration, path, calibration.to_json())
        return replay.level_probabilities(fitted, consensus.Pooling.from_config(fitted), experts, outputs)

    pooled = replayed(draft)
    for index, level_fit in enumerate(level_fits):
        level_fit.threshold = best_threshold(labels, pooled[:, index], weights)
    costs = replay.level_costs(cascade, expert_seconds)
    margins = choose_margins(replayed(draft), labels, weights, costs, source.max_mcc_loss)
    for level_fit, margin in zip(level_fits, margins.margins, strict=True):
        level_fit.exit_margin = margin
    final = CalibrationFile.model_validate(draft.model_dump())  # re-checked after the edits above
    text = final.to_json()
    return FitResult(final, text, _with_calibration(cascade, final, path, text), margins)
