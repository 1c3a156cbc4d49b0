"""The regressions of a fit, on arrays: per-expert temperature and bias, per-level weights and intercept.

Vectorised twins of what `consensus.Pooling` computes per request (a test holds them to the replay), so that
cross-validation and the bootstrap can refit hundreds of times in seconds. Every class is weighted equally
(validators' labels are uniform; the set's need not be).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from cascade import consensus
from sn72_tools.evaluation.scoring import mcc_from_confusion, mcc_of_counts

TEMPERATURE_RANGE = (0.01, 100.0)
THRESHOLD_RANGE = (0.02, 0.98)
_MAX_LOGIT = 30.0  # consensus clamps pooled log-odds the same way


def raw_logits(outputs: np.ndarray) -> np.ndarray:
    """Log-odds exactly as `consensus.logit` clips them."""
    p = np.clip(outputs, consensus._EPS, 1.0 - consensus._EPS)
    return np.log(p / (1.0 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -_MAX_LOGIT, _MAX_LOGIT)))


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sample weights that give each class half the total: fitting for uniform labels."""
    counts = np.bincount(labels, minlength=2).astype(float)
    return labels.size / (2.0 * counts[labels])


def weighted_mcc(labels: np.ndarray, answers01: np.ndarray, weights: np.ndarray) -> float:
    def mass(answer: int, label: int) -> float:
        return float(weights[(answers01 == answer) & (labels == label)].sum())

    return mcc_from_confusion(mass(0, 0), mass(1, 0), mass(0, 1), mass(1, 1))


def balanced_mcc_rows(labels: np.ndarray, answers01: np.ndarray) -> np.ndarray:
    """Row-wise MCC with each class weighted to half (rows of a stratified resample keep the class counts)."""
    positives = labels.sum(axis=1, keepdims=True).astype(float)
    negatives = labels.shape[1] - positives
    w1 = labels.shape[1] / (2.0 * np.maximum(positives, 1.0))
    w0 = labels.shape[1] / (2.0 * np.maximum(negatives, 1.0))
    tp = ((answers01 == 1) & (labels == 1)).sum(axis=1, keepdims=True) * w1
    fn = ((answers01 == 0) & (labels == 1)).sum(axis=1, keepdims=True) * w1
    tn = ((answers01 == 0) & (labels == 0)).sum(axis=1, keepdims=True) * w0
    fp = ((answers01 == 1) & (labels == 0)).sum(axis=1, keepdims=True) * w0
    return np.asarray(mcc_of_counts(tn, fp, fn, tp), dtype=float)[:, 0]


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


def fit_level(calibrated: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Pooling weights (one per column, never negative) and an intercept.

    A column the regression would weigh negatively (an expert no better than chance, or inverted) is dropped and
    the rest refitted: pooling must not turn an expert's answer around, which calibration already declined to do.
    """
    kept = np.ones(calibrated.shape[1], dtype=bool)
    coefficients = np.zeros(calibrated.shape[1])
    intercept = 0.0
    while kept.any():
        model = LogisticRegression(C=1.0).fit(calibrated[:, kept], labels, sample_weight=weights)
        coefficients[:] = 0.0
        coefficients[kept] = model.coef_[0]
        intercept = float(model.intercept_[0])
        negative = kept & (coefficients < 0.0)
        if not negative.any():
            break
        kept &= ~negative
    if not kept.any():  # nothing weighs positively: the level says what the class balance says
        coefficients[:] = 0.0
        intercept = 0.0
    return np.clip(coefficients, 0.0, 100.0), float(np.clip(intercept, -30.0, 30.0))


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


def threshold_map(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """`calibration.threshold_map` on an array: [0, t] -> [0, 0.5], [t, 1] -> [0.5, 1]."""
    if threshold == 0.5:
        return probabilities
    return np.where(probabilities <= threshold, 0.5 * probabilities / threshold,
                    0.5 + 0.5 * (probabilities - threshold) / (1.0 - threshold))


@dataclass
class Parameters:
    """Everything the regressions fit: per expert (columns of `raw`), then per level."""

    temperatures: np.ndarray  # (experts,)
    biases: np.ndarray
    informative: np.ndarray  # bool
    level_columns: list[list[int]]  # the experts answered up to each level
    level_weights: list[np.ndarray]  # one weight per column of that level
    intercepts: np.ndarray  # (levels,)

    def calibrated(self, raw: np.ndarray) -> np.ndarray:
        return raw / self.temperatures + self.biases

    def pooled(self, raw: np.ndarray) -> np.ndarray:
        """(n, levels): each level's pooled probability before its threshold map, as `consensus.Pooling` does."""
        calibrated = self.calibrated(raw)
        logits = [intercept + calibrated[:, columns] @ weights for columns, weights, intercept
                  in zip(self.level_columns, self.level_weights, self.intercepts, strict=True)]
        return sigmoid(np.column_stack(logits))


def fit_parameters(level_columns: list[list[int]], raw: np.ndarray, labels: np.ndarray) -> Parameters:
    """Temperatures and biases per expert, then each level's weights over the calibrated log-odds so far."""
    weights = balanced_weights(labels)
    fits = [fit_expert(raw[:, j], labels, weights) for j in range(raw.shape[1])]
    parameters = Parameters(np.array([f[0] for f in fits]), np.array([f[1] for f in fits]),
                            np.array([f[2] for f in fits]), level_columns, [], np.zeros(len(level_columns)))
    calibrated = parameters.calibrated(raw)
    for index, columns in enumerate(level_columns):
        level_weights, intercept = fit_level(calibrated[:, columns], labels, weights)
        parameters.level_weights.append(level_weights)
        parameters.intercepts[index] = intercept
    return parameters


def single_expert(parameters: Parameters, column: int) -> Parameters:
    """The same calibration, but every level answers with expert `column` alone (0 weight elsewhere; levels
    before it answer 0.5, which never exits)."""
    weights = [np.array([1.0 if c == column else 0.0 for c in columns]) for columns in parameters.level_columns]
    return Parameters(parameters.temperatures, parameters.biases, parameters.informative, parameters.level_columns,
                      weights, np.zeros(len(parameters.level_columns)))
