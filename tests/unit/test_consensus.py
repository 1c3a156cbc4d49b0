"""Pooling on simulated experts with known noise, and exact exit routing on constructed inputs."""

from __future__ import annotations

import numpy as np

from cascade import consensus
from cascade.config import Calibration
from cascade.request import ExpertAnswer
from sn72_tools.client import mcc
from tests.factories.engine import expert_config


def simulated_expert(labels: np.ndarray, skill: float, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities whose true log-odds are skill*(2y-1)+noise, reported over-confidently (x temperature)."""
    true_logit = skill * (2 * labels - 1) + rng.normal(0.0, 1.0, labels.shape)
    return 1.0 / (1.0 + np.exp(-true_logit * temperature))


def test_calibrated_pooling_beats_the_best_single_expert():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 4000)
    skills, temperatures = (1.2, 0.9, 0.7), (3.0, 1.0, 0.5)
    outputs = [simulated_expert(labels, s, t, rng) for s, t in zip(skills, temperatures, strict=True)]
    configs = [expert_config(f"e{i}", calibration=Calibration(temperature=t), weight=1.0)
               for i, t in enumerate(temperatures)]
    pooled = [
        consensus.pooled_probability([consensus.make_answer(c, 0, float(o[j])) for c, o in zip(configs, outputs,
                                                                                             strict=True)])
        for j in range(len(labels))
    ]
    best_single = max(mcc(labels.tolist(), o.tolist()) for o in outputs)
    pooled_mcc = mcc(labels.tolist(), pooled)
    assert pooled_mcc > best_single + 0.03, (pooled_mcc, best_single)


def test_raw_averaging_is_worse_than_calibrated_pooling_when_one_expert_is_overconfident():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 4000)
    weak_loud = simulated_expert(labels, 0.3, 8.0, rng)  # barely informative, shouts
    strong_quiet = simulated_expert(labels, 1.5, 0.3, rng)  # informative, timid
    configs = [expert_config("loud", calibration=Calibration(temperature=8.0)),
               expert_config("quiet", calibration=Calibration(temperature=0.3))]
    pooled = [consensus.pooled_probability([consensus.make_answer(configs[0], 0, float(a)),
                                            consensus.make_answer(configs[1], 0, float(b))])
              for a, b in zip(weak_loud, strong_quiet, strict=True)]
    averaged = ((weak_loud + strong_quiet) / 2).tolist()
    assert mcc(labels.tolist(), pooled) > mcc(labels.tolist(), averaged) + 0.1


def answer(p: float, weight: float = 1.0, temperature: float = 1.0, bias: float = 0.0) -> ExpertAnswer:
    return consensus.make_answer(expert_config("x", weight=weight,
                                               calibration=Calibration(temperature=temperature, bias=bias)), 0, p)


def test_exit_rule_routes_exactly():
    assert consensus.is_confident(consensus.pooled_probability([answer(0.85)]), 0.35)
    assert not consensus.is_confident(consensus.pooled_probability([answer(0.80)]), 0.35)
    assert consensus.is_confident(consensus.pooled_probability([answer(0.15)]), 0.35)
    # two agreeing 0.75s pool to 0.9 (log-odds add): confident at 0.35 although neither is alone
    assert abs(consensus.pooled_probability([answer(0.75), answer(0.75)]) - 0.9) < 1e-9
    assert consensus.is_confident(consensus.pooled_probability([answer(0.75), answer(0.75)]), 0.35)
    # disagreeing experts cancel out
    assert abs(consensus.pooled_probability([answer(0.8), answer(0.2)]) - 0.5) < 1e-9
    # a margin of 0.5 never exits
    assert not consensus.is_confident(consensus.pooled_probability([answer(0.999999)]), 0.5)


def test_calibration_and_weights_act_in_log_odds_space():
    assert abs(consensus.pooled_probability([answer(0.9, temperature=2.0)]) - 0.75) < 1e-9
    assert abs(consensus.pooled_probability([answer(0.5, bias=np.log(3))]) - 0.75) < 1e-9
    assert abs(consensus.pooled_probability([answer(0.75, weight=2.0)]) - 0.9) < 1e-9
    assert consensus.pooled_probability([]) == 0.5
    assert 0.0 < consensus.pooled_probability([answer(1.0)] * 50) < 1.0
