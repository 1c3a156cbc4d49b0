"""The validators' reward, estimated by resampling the windows they score.

Per validator and round (natix validator `get_rewards` and `MinerPerformanceTracker`, docs/protocol.md):
    reward = (0.5 * MCC(last 100 rounds) + 0.5 * accuracy(last 10 rounds)) ** 3
- every answer is binarised with np.round (0.5 -> 0);
- a late answer or an error comes back as -1: that round's reward is 0, and the -1 takes its slot in
  both windows but is left out of both metrics (misses shrink the window of answers that count);
- MCC is max(0, MCC), and 0 unless both classes appear in the window's labels;
- an empty window scores 0;
- a share of rounds are consensus tasks (`ConsensusModel`): scored against the rounded mean of every
  miner's raw answer, this one's included, instead of a known label.
An answer from the prior is an ordinary answer (the prior, binarised). Labels are uniform 0/1, so
each resampled round draws its label with probability 1/2, then an image of that class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sn72_tools.evaluation.scoring import mcc_of_counts

MCC_WINDOW = 100
ACCURACY_WINDOW = 10
LATE = -1.0  # what a late answer or an error looks like to a validator


@dataclass(frozen=True)
class ConsensusModel:
    """Consensus tasks (docs/protocol.md): a validator sends one image to `miners` miners at once and scores each
    against `round(mean of every valid raw answer)`, this miner's own included.

    The other miners are simulated from the recorded experts: each takes one expert's calibrated log-odds for the
    image, chosen at random, plus Gaussian noise of `noise` log-odds (they see what our experts see, less well).
    `share` is the part of a miner's scored rounds that are consensus tasks: a validator polls the task API every
    600 s and sends challenges every 66 s, about 1 in 10.
    """

    share: float = 0.1
    miners: int = 10
    noise: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RewardEstimate:
    mean: float
    p5: float  # 5th percentile over resampled windows: a bad stretch
    trials: int
    late_rate: float
    prior_rate: float
    consensus_share: float = 0.0

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


def _draws(labels: np.ndarray, population: np.ndarray | None, consensus: ConsensusModel | None, trials: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """Shared randomness for every policy or candidate compared: labels, images, and the consensus rounds with the
    other miners' answers (their sum and count)."""
    by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
    if any(idx.size == 0 for idx in by_class):
        return None
    shape = (trials, MCC_WINDOW)
    drawn_labels = rng.integers(0, 2, shape)
    picks = np.where(
        drawn_labels == 1,
        by_class[1][rng.integers(0, by_class[1].size, shape)],
        by_class[0][rng.integers(0, by_class[0].size, shape)],
    )
    if consensus is None or consensus.share <= 0.0 or population is None:
        return drawn_labels, picks, None, None
    is_consensus = rng.random(shape) < consensus.share
    others = consensus.miners - 1
    columns = rng.integers(0, population.shape[1], (*shape, others))
    logits = population[picks[..., None], columns] + consensus.noise * rng.normal(size=(*shape, others))
    others_sum = (1.0 / (1.0 + np.exp(-np.clip(logits, -30.0, 30.0)))).sum(axis=-1)
    return drawn_labels, picks, is_consensus, others_sum


def _simulate(labels: np.ndarray, predictions: list[np.ndarray], *, late_rate: float, prior_rate: float, prior: float,
              trials: int, seed: int, consensus: ConsensusModel | None,
              population: np.ndarray | None) -> list[np.ndarray] | None:
    """Per-round rewards of each prediction vector under the same draws (common random numbers: paired)."""
    rng = np.random.default_rng(seed)
    draws = _draws(labels, population, consensus, trials, rng)
    if draws is None:
        return None
    drawn_labels, picks, is_consensus, others_sum = draws
    shape = drawn_labels.shape
    prior_mask, late_mask = rng.random(shape) < prior_rate, rng.random(shape) < late_rate
    results = []
    for p in predictions:
        answers = np.where(prior_mask, prior, p[picks])
        answers = np.where(late_mask, LATE, answers)
        scored_labels = drawn_labels
        if is_consensus is not None and others_sum is not None and consensus is not None:
            valid = answers != LATE
            mean = (others_sum + np.where(valid, answers, 0.0)) / (consensus.miners - 1 + valid)
            scored_labels = np.where(is_consensus, np.round(mean).astype(int), drawn_labels)
        results.append(window_rewards(scored_labels, answers))
    return results


def estimate_reward(
    labels: np.ndarray,
    predictions: np.ndarray,
    *,
    late_rate: float = 0.0,
    prior_rate: float = 0.0,
    prior: float = 0.5,
    trials: int = 2000,
    seed: int = 0,
    consensus: ConsensusModel | None = None,
    population: np.ndarray | None = None,
) -> RewardEstimate | None:
    """Mean and 5th percentile of the per-round reward over `trials` resampled 100-round histories.

    Each round is late (-1) with probability `late_rate`, otherwise answered from the prior with
    probability `prior_rate`, otherwise the recorded answer of the image drawn. With a `consensus` model and a
    `population` ((images, k) calibrated log-odds the other miners are simulated from), that share of rounds is
    scored against the simulated consensus label instead of the true one. None when the set lacks a class
    (uniform labels cannot be drawn from it).
    """
    y = np.asarray(labels, dtype=int)
    rewards = _simulate(y, [np.asarray(predictions, dtype=float)], late_rate=late_rate, prior_rate=prior_rate,
                        prior=prior, trials=trials, seed=seed, consensus=consensus, population=population)
    if rewards is None:
        return None
    return RewardEstimate(
        mean=float(rewards[0].mean()),
        p5=float(np.percentile(rewards[0], 5)),
        trials=trials,
        late_rate=late_rate,
        prior_rate=prior_rate,
        consensus_share=consensus.share if consensus is not None and population is not None else 0.0,
    )


def reward_difference_samples(labels: np.ndarray, a: np.ndarray, b: np.ndarray, rows: np.ndarray, *,
                              trials: int, seed: int, consensus: ConsensusModel | None,
                              population: np.ndarray | None, prior: float = 0.5,
                              late_rates: tuple[float, float] = (0.0, 0.0),
                              prior_rates: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Mean reward of `a` minus that of `b` on each resampled set of images (`rows`, from
    bootstrap.stratified_indices), every set simulated with the same draws for both sides."""
    y = np.asarray(labels, dtype=int)
    out = np.empty(rows.shape[0])
    for index, picked in enumerate(rows):
        sub_population = None if population is None else population[picked]
        sides = []
        for side, p in enumerate((a, b)):
            rewards = _simulate(y[picked], [p[picked]], late_rate=late_rates[side], prior_rate=prior_rates[side],
                                prior=prior, trials=trials, seed=seed + index, consensus=consensus,
                                population=sub_population)
            assert rewards is not None
            sides.append(float(rewards[0].mean()))
        out[index] = sides[0] - sides[1]
    return out
