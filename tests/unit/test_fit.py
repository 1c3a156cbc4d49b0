"""Fitting on simulated experts with known noise and known miscalibration, where the right answer is known.

Each simulated expert sees a score s = skill * (2y - 1) + N(0, 1); the true log-odds of roadwork given s
is 2 * skill * s. It reports p = sigmoid(T * (true log-odds - b)): over-confident for T > 1, biased by b.
Calibration must recover T and b; pooling, the threshold map and the exit margins are judged on a
held-out half with the engine's own pooling code (the replay).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade import consensus
from cascade.calibration import FitSource, threshold_map
from sn72_tools.evaluation import replay
from sn72_tools.evaluation.fit import FitSettings, best_threshold, fit_cascade, fit_expert, raw_logits
from sn72_tools.evaluation.scoring import mcc
from tests.factories.engine import cascade_config, expert_config

SKILLS = {"cheap": 0.9, "big-a": 1.1, "big-b": 1.0}
TRUE_TEMPERATURES = {"cheap": 3.0, "big-a": 0.5, "big-b": 1.5}
TRUE_BIASES = {"cheap": 0.6, "big-a": -0.4, "big-b": 0.0}
COSTS_S = {"cheap": 0.001, "big-a": 0.010, "big-b": 0.012}


def simulate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    columns = []
    for name, skill in SKILLS.items():
        true_logit = 2 * skill * (skill * (2 * labels - 1) + rng.normal(0.0, 1.0, n))
        columns.append(1.0 / (1.0 + np.exp(-TRUE_TEMPERATURES[name] * (true_logit - TRUE_BIASES[name]))))
    return np.column_stack(columns), labels


def two_level_cascade():
    return cascade_config([[expert_config("cheap")], [expert_config("big-a"), expert_config("big-b")]])


def source(max_mcc_loss: float = 0.01) -> FitSource:
    return FitSource(dataset="simulated", kind="simulated", distortion="native", images=0, counts={}, fit_images=0,
                     held_out_images=0, split="simulated halves", seed=0, max_mcc_loss=max_mcc_loss)


def settings(max_mcc_loss: float = 0.01) -> FitSettings:
    """The fit's own settings but 100 resamples (as test_fit_evidence.py's): the intervals' refits on resamples were
    90% of a fit's time (cProfile), and no test here reads an interval."""
    return FitSettings(max_mcc_loss=max_mcc_loss, seed=0, bootstrap=100)


@pytest.fixture(scope="module")
def fitted():
    outputs, labels = simulate(8000, seed=1)
    cascade = two_level_cascade()
    result = fit_cascade(cascade, list(SKILLS), outputs, labels, source=source(), expert_seconds=COSTS_S,
                         path=Path("/nonexistent/calibration.json"), settings=settings())
    held_outputs, held_labels = simulate(8000, seed=2)
    return cascade, result, (outputs, labels), (held_outputs, held_labels)


@pytest.mark.slow
def test_fitted_temperatures_and_biases_are_close_to_the_true_ones(fitted):
    _, result, _, _ = fitted
    for name in SKILLS:
        fit = result.calibration.experts[name]
        # tolerance: 10% on the temperature, 0.1 log-odds on the bias (n = 8000; sampling error ~3% / 0.04)
        assert fit.temperature == pytest.approx(TRUE_TEMPERATURES[name], rel=0.10), name
        assert fit.bias == pytest.approx(TRUE_BIASES[name], abs=0.10), name
        assert (fit.backend, fit.model) == ("hf_classifier", f"fake/{name}")


@pytest.mark.slow
def test_level_weights_are_near_one_for_independent_calibrated_experts(fitted):
    _, result, _, _ = fitted
    last = result.calibration.levels[-1]
    assert sorted(last.weights) == sorted(SKILLS)
    assert all(w == pytest.approx(1.0, abs=0.15) for w in last.weights.values()), last.weights
    assert abs(last.intercept) < 0.1


@pytest.mark.slow
def test_pooled_mcc_beats_the_best_single_expert_on_held_out_data(fitted):
    _, result, _, (outputs, labels) = fitted
    pooling = consensus.Pooling.from_config(result.cascade)
    levels = replay.level_probabilities(result.cascade, pooling, list(SKILLS), outputs)
    best_single = max(mcc(labels, outputs[:, j]) for j in range(outputs.shape[1]))
    # Three experts of similar skill with independent noise: pooling gains ~0.1 MCC; the test asks for 0.05.
    assert mcc(labels, levels[:, -1]) > best_single + 0.05, (mcc(labels, levels[:, -1]), best_single)


@pytest.mark.slow
def test_exit_margins_respect_the_mcc_loss_bound_while_cutting_mean_cost(fitted):
    cascade, result, _, (outputs, labels) = fitted
    choice = result.margins
    assert choice.mcc >= choice.reference_mcc - 0.01  # on the fit data: exactly the bound
    # Pooled MCC is ~0.92 here, so 0.01 of it buys only the surest cheap answers: ~23% of the cost.
    assert choice.cost_s < 0.85 * choice.all_levels_cost_s, choice
    assert choice.margins[-1] == 0.5 and choice.margins[0] < 0.5
    pooling = consensus.Pooling.from_config(result.cascade)
    levels = replay.level_probabilities(result.cascade, pooling, list(SKILLS), outputs)
    exits = replay.exit_levels(replay.pooling_margins(pooling), levels)
    costs = replay.level_costs(cascade, COSTS_S)
    # held out: the bound holds up to sampling noise (0.01 more for 8000 images), at a lower cost
    assert mcc(labels, replay.answers_at(levels, exits)) >= mcc(labels, levels[:, -1]) - 0.02
    assert costs[exits].mean() < 0.85 * costs[-1]


@pytest.mark.slow
def test_a_looser_bound_buys_a_cheaper_cascade_and_a_zero_bound_loses_nothing(fitted):
    cascade, result, (outputs, labels), _ = fitted
    margins = {}
    for loss in (0.0, 0.03):
        margins[loss] = fit_cascade(cascade, list(SKILLS), outputs, labels, source=source(loss),
                                    expert_seconds=COSTS_S, path=Path("/nonexistent/c.json"),
                                    settings=settings(loss)).margins
        assert margins[loss].mcc >= margins[loss].reference_mcc - loss
    assert margins[0.0].mcc >= margins[0.0].reference_mcc
    assert margins[0.03].cost_s < result.margins.cost_s < margins[0.0].cost_s


def test_the_threshold_map_moves_a_shifted_optimum_onto_one_half():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 6000)
    # Scores whose best cut is near 0.7, not 0.5 (as an expert biased towards "roadwork" gives).
    scores = 1.0 / (1.0 + np.exp(-(1.5 * (2 * labels - 1) + rng.normal(0, 1.2, labels.size) + 0.85)))
    threshold = best_threshold(labels, scores)
    assert 0.62 < threshold < 0.78, threshold
    mapped = np.array([threshold_map(float(p), threshold) for p in scores])
    assert mcc(labels, mapped) > mcc(labels, scores) + 0.05  # validators round the mapped answer at 0.5
    assert best_threshold(labels, mapped) == 0.5  # the optimum now sits on 0.5
    order = np.argsort(scores)
    assert np.all(np.diff(mapped[order]) >= 0)  # monotone: the ranking (and ROC AUC) is untouched


def test_no_better_threshold_means_no_map():
    labels = np.array([0, 1] * 50)
    assert best_threshold(labels, np.full(100, 0.5)) == 0.5
    assert best_threshold(labels, np.where(labels == 1, 0.9, 0.1)) == 0.5


@pytest.mark.slow
def test_an_inverted_or_useless_expert_says_almost_nothing_and_is_named():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 3000)
    inverted = 1.0 / (1.0 + np.exp(2 * labels - 1 + rng.normal(0, 1, labels.size)))
    temperature, _, informative = fit_expert(raw_logits(inverted), labels, np.ones(labels.size))
    assert temperature == 100.0 and not informative
    outputs = np.column_stack([inverted, simulate(3000, 4)[0][:, 1:]])
    cascade = two_level_cascade()
    result = fit_cascade(cascade, list(SKILLS), outputs, labels, source=source(), expert_seconds=COSTS_S,
                         path=Path("/x/c.json"), settings=settings())
    assert any("expert cheap answers no better than chance" in note for note in result.calibration.source.notes)


def test_fitting_needs_both_classes():
    from sn72_tools.evaluation.datasets import EvalError

    outputs, labels = simulate(200, 6)
    with pytest.raises(EvalError, match="each class"):
        fit_cascade(two_level_cascade(), list(SKILLS), outputs[labels == 1], labels[labels == 1], source=source(),
                    expert_seconds=COSTS_S, path=Path("/x/c.json"))
