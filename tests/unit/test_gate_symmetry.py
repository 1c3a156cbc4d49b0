"""The gate's comparison favours neither side: swapped, every difference changes sign (the reward's crowd of
simulated miners once came from the served experts alone, and agreed with the served answers)."""

from __future__ import annotations

import numpy as np
import pytest

from sn72_tools.evaluation.record import Recording
from sn72_tools.promotion.gate import GateSettings, Side, compare
from tests.factories.engine import cascade_config, expert_config


def side(title: str, name: str, outputs: np.ndarray, labels: np.ndarray) -> Side:
    cascade = cascade_config([[expert_config(name)]], margins=[0.5])
    recording = Recording(experts=[name], names=[f"img{i}" for i in range(labels.size)], labels=labels,
                          outputs=outputs[:, None], skipped=[], inferred=0, cached=labels.size, seconds=0.0,
                          startup_s=0.0, expert_seconds={}, hashes=[f"{i:064x}" for i in range(labels.size)])
    return Side(title, cascade, recording)


@pytest.mark.slow
def test_swapping_the_sides_turns_every_difference_around():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 200)
    good = 1 / (1 + np.exp(-((2 * labels - 1) * 1.5 + rng.normal(0, 1, labels.size))))
    random = rng.random(labels.size)
    settings = GateSettings(rounds=300, latency_sample=0)
    forward = compare(side("served", "a", random, labels), side("candidate", "b", good, labels), settings)
    backward = compare(side("served", "b", good, labels), side("candidate", "a", random, labels), settings)
    for metric in ("mcc", "accuracy", "reward"):
        assert forward.differences[metric].estimate == pytest.approx(-backward.differences[metric].estimate,
                                                                     abs=1e-9), metric
    assert forward.promote and not backward.promote
    # two know-nothings: equal in MCC and accuracy, and the reward does not call either worse
    other = rng.random(labels.size)
    even = compare(side("served", "a", random, labels), side("candidate", "b", other, labels), settings)
    assert not even.promote and not even.differences["reward"].below_zero
