"""Fitting only as far as the data supports it: size floor, shrinkage to the raw decision, structure choice,
intervals on every parameter (the defect: a fit on random models moved an exit margin to 0 on noise).

Simulated experts as in test_fit.py: each sees s = skill * (2y - 1) + N(0, 1) and reports a (mis)calibrated
probability of it; skill 0 is a model that knows nothing (a random-weight network).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade import consensus
from cascade.calibration import FitSource
from sn72_tools.evaluation import replay
from sn72_tools.evaluation.datasets import EvalError
from sn72_tools.evaluation.fit import FitSettings, fit_cascade
from sn72_tools.evaluation.fit_parameters import Parameters, raw_logits, threshold_map
from tests.factories.engine import cascade_config, expert_config

COSTS_S = {"cheap": 0.001, "big": 0.010, "other": 0.012}
FAST = FitSettings(bootstrap=100, folds=5)


def simulate(n: int, skills: dict[str, float], seed: int, temperature: float = 1.0,
             shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    rng.shuffle(labels)
    columns = []
    for skill in skills.values():
        score = skill * (2 * labels - 1) + rng.normal(0.0, 1.0, n)
        columns.append(1.0 / (1.0 + np.exp(-(temperature * 2 * max(skill, 0.3) * score + shift))))
    return np.column_stack(columns), labels


def source() -> FitSource:
    return FitSource(dataset="simulated", kind="simulated", distortion="native", images=0, counts={}, fit_images=0,
                     held_out_images=0, split="simulated", seed=0, max_mcc_loss=0.01)


def fit(levels: list[list[str]], outputs: np.ndarray, labels: np.ndarray, **kwargs):
    cascade = cascade_config([[expert_config(name) for name in names] for names in levels])
    names = [name for level in levels for name in level]
    return fit_cascade(cascade, names, outputs, labels, source=source(), expert_seconds=COSTS_S,
                       path=Path("/nonexistent/c.json"), settings=kwargs.pop("settings", FAST), **kwargs)


@pytest.mark.slow
def test_a_fit_set_below_the_floor_is_refused_with_the_numbers():
    outputs, labels = simulate(120, {"cheap": 1.0}, seed=1)
    with pytest.raises(EvalError, match=r"at least 200 labelled images \(50 of each class\).*has 120 \(60 of class 0"):
        fit([["cheap"]], outputs, labels)
    outputs, _ = simulate(300, {"cheap": 1.0}, seed=1)
    lopsided = np.concatenate([np.zeros(260, dtype=int), np.ones(40, dtype=int)])
    with pytest.raises(EvalError, match="40 of class 1"):
        fit([["cheap"]], outputs, lopsided)
    assert fit([["cheap"]], *simulate(120, {"cheap": 1.0}, seed=1), min_images=100).report["fit_images"] == 120


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_models_keep_the_raw_decision_no_map_and_no_early_exit(seed):
    """Two experts that know nothing, 300 images: any threshold or margin the data suggests is noise."""
    outputs, labels = simulate(300, {"cheap": 0.0, "big": 0.0}, seed=seed)
    cascade = cascade_config([[expert_config("cheap")], [expert_config("big")]])
    result = fit_cascade(cascade, ["cheap", "big"], outputs, labels, source=source(), expert_seconds=COSTS_S,
                         path=Path("/nonexistent/c.json"))  # the defaults, as `sn72-eval --fit` runs
    assert [level.exit_margin for level in result.calibration.levels] == [0.5, 0.5], result.report["margins"]
    # pooling two know-nothings beats neither beyond noise: the last one answers alone, never cut short, and its
    # own raw decision (p > 0.5) stands: neither the calibrated 0.5 nor a best cut beats it beyond noise
    assert result.report["structure"]["kind"] == "single"
    assert result.calibration.levels[0].threshold == 0.5
    pooling = consensus.Pooling.from_config(result.cascade)
    served = replay.level_probabilities(result.cascade, pooling, ["cheap", "big"], outputs)[:, -1]
    assert np.array_equal(np.round(served), (outputs[:, 1] > 0.5).astype(float))


def heteroscedastic(n: int, seed: int, spread: float, centre: float) -> tuple[np.ndarray, np.ndarray]:
    """An expert whose roadwork scores spread wider than the others: no logistic calibration puts its best MCC cut
    on 0.5, so only a threshold map can."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    scores = np.where(labels == 1, rng.normal(centre, spread, n), rng.normal(0.0, 1.0 if spread < 2 else 0.7, n))
    return (1.0 / (1.0 + np.exp(-scores)))[:, None], labels


@pytest.mark.slow
def test_a_threshold_map_is_used_only_when_it_beats_one_half_held_out():
    outputs, labels = heteroscedastic(4000, seed=1, spread=2.0, centre=2.0)
    strong = fit([["cheap"]], outputs, labels)
    threshold = strong.report["parameters"]["levels"][0]["threshold"]
    assert strong.calibration.levels[0].threshold == threshold["used"] == pytest.approx(threshold["estimate"])
    assert 0.55 < threshold["used"] < 0.7 and threshold["best_cut_over_raw"]["low"] > 0
    # 300 images whose raw decision is near the best: the best cut on the data sits away from it, but beats neither
    # the calibrated 0.5 nor the expert's own raw decision held out: the raw decision stands
    for seed in range(3):
        rng = np.random.default_rng(seed)
        labels = np.repeat([0, 1], 150)
        scores = np.where(labels == 1, rng.normal(1.0, 1.5, 300), rng.normal(-1.0, 1.0, 300))
        outputs = (1.0 / (1.0 + np.exp(-scores)))[:, None]
        result = fit([["cheap"]], outputs, labels)
        weak = result.report["parameters"]["levels"][0]["threshold"]
        assert weak["estimate"] != 0.5 and weak["used"] == pytest.approx(weak["raw_cut"])
        assert weak["best_cut_over_raw"]["low"] <= 0
        pooling = consensus.Pooling.from_config(result.cascade)
        served = replay.level_probabilities(result.cascade, pooling, ["cheap"], outputs)[:, 0]
        assert np.array_equal(served > 0.5, outputs[:, 0] > 0.5)


@pytest.mark.slow
def test_pooling_that_does_not_beat_the_best_expert_answers_with_that_expert_alone():
    # A good expert at level 2 and a useless one at level 1: pooling cannot beat the good one beyond noise.
    outputs, labels = simulate(600, {"cheap": 0.0, "big": 1.2}, seed=6)
    result = fit([["cheap"], ["big"]], outputs, labels)
    assert result.report["structure"]["kind"] == "single" and result.report["structure"]["best_single"] == "big"
    levels = result.calibration.levels
    assert levels[0].weights == {"cheap": 0.0} and levels[0].intercept == 0.0 and levels[0].exit_margin == 0.5
    assert levels[1].weights == {"cheap": 0.0, "big": 1.0}
    # served exactly as "big" calibrated, alone
    pooling = consensus.Pooling.from_config(result.cascade)
    served = replay.level_probabilities(result.cascade, pooling, ["cheap", "big"], outputs)[:, -1]
    fit_big = result.calibration.experts["big"]
    alone = 1 / (1 + np.exp(-(raw_logits(outputs[:, 1]) / fit_big.temperature + fit_big.bias)))
    assert np.allclose(served, threshold_map(alone, levels[1].threshold), atol=1e-9)


@pytest.mark.slow
def test_pooling_never_turns_an_inverted_expert_around():
    """An expert whose answers are inverted gets the largest temperature; pooling must not give it a negative
    weight and serve its answers turned around (found by an outside review on flipped labels)."""
    outputs, labels = simulate(1000, {"cheap": 1.0, "big": 1.0}, seed=12)
    outputs[:, 0] = 1.0 - outputs[:, 0]  # inverted
    result = fit([["cheap"], ["big"]], outputs, labels)
    for level in result.calibration.levels:
        assert all(w >= 0.0 for w in level.weights.values()), level.weights


@pytest.mark.slow
def test_three_independent_experts_are_pooled():
    outputs, labels = simulate(3000, {"cheap": 0.9, "big": 1.0, "other": 1.0}, seed=7)
    result = fit([["cheap"], ["big", "other"]], outputs, labels)
    assert result.report["structure"]["kind"] == "pooled"
    assert result.report["structure"]["pooled_minus_best"]["low"] > 0


@pytest.mark.slow
def test_every_fitted_parameter_has_an_interval_that_holds_its_estimate():
    outputs, labels = simulate(1000, {"cheap": 1.0, "big": 1.1}, seed=8, temperature=2.0)
    result = fit([["cheap"], ["big"]], outputs, labels)
    parameters = result.report["parameters"]
    for name, block in parameters["experts"].items():
        fitted = result.calibration.experts[name]
        for key, value in (("temperature", fitted.temperature), ("bias", fitted.bias)):
            interval = block[key]
            assert interval["estimate"] == pytest.approx(value)
            assert interval["low"] <= value <= interval["high"] and interval["low"] < interval["high"], (name, key)
    for level, block in zip(result.calibration.levels, parameters["levels"], strict=True):
        assert set(block["weights"]) == set(level.weights)
        assert block["intercept"]["low"] <= block["intercept"]["high"]
        assert {"estimate", "low", "high", "used", "reason"} <= set(block["threshold"])
    # the same report travels in the calibration file
    assert result.calibration.report == result.report


@pytest.mark.slow
def test_the_vectorised_pooling_is_the_engines_own():
    """Cross-validation and the bootstrap pool on arrays: the same numbers must give the replay's answers."""
    outputs, labels = simulate(2000, {"cheap": 1.0, "big": 1.1, "other": 0.7}, seed=9, shift=1.5)
    result = fit([["cheap"], ["big", "other"]], outputs, labels)
    names = ["cheap", "big", "other"]
    pooling = consensus.Pooling.from_config(result.cascade)
    served = replay.level_probabilities(result.cascade, pooling, names, outputs)
    calibration = result.calibration
    parameters = Parameters(
        np.array([calibration.experts[n].temperature for n in names]),
        np.array([calibration.experts[n].bias for n in names]), np.ones(3, dtype=bool), [[0], [0, 1, 2]],
        [np.array([level.weights[names[c]] for c in columns]) for level, columns
         in zip(calibration.levels, [[0], [0, 1, 2]], strict=True)],
        np.array([level.intercept for level in calibration.levels]))
    pooled = parameters.pooled(raw_logits(outputs))
    mapped = np.column_stack([threshold_map(pooled[:, i], level.threshold)
                              for i, level in enumerate(calibration.levels)])
    assert np.allclose(mapped, served, atol=1e-9)
