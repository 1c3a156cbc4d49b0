"""The cascade's pooling and exit rule replayed on recorded outputs: what it would have answered.

The replay calls the engine's own `consensus.Pooling` per image (the same code the miner runs), so a
fitted calibration is judged exactly as it will be served.
"""

from __future__ import annotations

import numpy as np

from cascade import consensus
from cascade.config import CascadeConfig


def level_probabilities(cascade: CascadeConfig, pooling: consensus.Pooling, experts: list[str],
                        outputs: np.ndarray) -> np.ndarray:
    """(images, levels): each level's answer with every expert up to it answered."""
    column = {name: j for j, name in enumerate(experts)}
    result = np.empty((outputs.shape[0], len(cascade.levels)))
    for i, row in enumerate(outputs):
        answers = []
        for index, level in enumerate(cascade.levels):
            answers += [consensus.make_answer(e, index, float(row[column[e.name]])) for e in level.experts]
            result[i, index] = pooling.level_probability(index, answers)
    return result


def exit_levels(margins: list[float] | np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Index of the level each image leaves at: the first confident one (`consensus.is_confident`), else the last."""
    levels = probabilities.shape[1]
    if levels == 1:  # one level: every image leaves there (argmax of no earlier level would raise)
        return np.zeros(probabilities.shape[0], dtype=int)
    confident = np.abs(probabilities[:, : levels - 1] - 0.5) >= np.asarray(margins, dtype=float)[: levels - 1]
    return np.where(confident.any(axis=1), confident.argmax(axis=1), levels - 1)


def pooling_margins(pooling: consensus.Pooling) -> list[float]:
    return [level.exit_margin for level in pooling.levels]


def answers_at(probabilities: np.ndarray, exits: np.ndarray) -> np.ndarray:
    return probabilities[np.arange(probabilities.shape[0]), exits]


def level_costs(cascade: CascadeConfig, expert_seconds: dict[str, float]) -> np.ndarray:
    """Expert-seconds per image of running levels 0..k, for each k (unmeasured experts count 0)."""
    per_level = [sum(expert_seconds.get(e.name, 0.0) for e in level.experts) for level in cascade.levels]
    return np.cumsum(per_level)


def mean_cost(costs: np.ndarray, exits: np.ndarray) -> float:
    """Expert-seconds per image of a replay: the share of images leaving at each level times that level's cost.

    Weighted by shares rather than averaged image by image: when every image leaves at one level the result is
    that level's cost exactly (a mean of 24 equal floats can be one ulp above it, and report "costs more than
    running every level").
    """
    shares = np.bincount(exits, minlength=costs.size) / exits.size
    return float(shares @ costs)
