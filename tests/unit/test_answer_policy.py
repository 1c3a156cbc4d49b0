"""The answer sent to validators: shaped by policy, never on the other side of 0.5, never from the prior."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascade.answer import shaped, shaped_probability
from cascade.config import AnswerConfig, CascadeConfig
from cascade.request import ExpertAnswer, Result, Status
from sn72_tools.evaluation.reward import ConsensusModel, estimate_reward

DECISIVE = AnswerConfig()
CALIBRATED = AnswerConfig(policy="calibrated")


@given(st.floats(0.0, 1.0), st.floats(0.5000001, 1.0))
def test_a_decisive_answer_rounds_as_validators_round_the_calibrated_one(p, value):
    sent = shaped_probability(p, True, AnswerConfig(decisive_value=value))
    assert np.round(sent) == np.round(p)  # the same side: 0.5 itself is "no roadwork"
    assert sent in (value, 1.0 - value) and 0.0 <= sent <= 1.0


def test_the_default_is_decisive_and_the_prior_is_sent_as_it_is():
    assert CascadeConfig.model_validate({"levels": [{"name": "l", "experts": [
        {"name": "a", "backend": "hf_classifier", "model": "m"}]}]}).answer == AnswerConfig(policy="decisive",
                                                                                           decisive_value=0.99)
    answered = Result(1, 0.7, Status.CONFIDENT, 1, (ExpertAnswer("a", 0, 0.7, 0.85, 1.0),))
    assert shaped(answered, DECISIVE) == 0.99 and shaped(answered, CALIBRATED) == 0.7
    assert shaped(Result(2, 0.5, Status.EXHAUSTED, 1, (ExpertAnswer("a", 0, 0.5, 0.0, 1.0),)), DECISIVE) == \
        pytest.approx(0.01)
    prior = Result(3, 0.5, Status.PRIOR, 0, ())
    assert shaped(prior, DECISIVE) == 0.5  # nothing answered: no confidence to send
    cached = Result(4, 0.3, Status.CACHED, 0, answered.answers)
    assert shaped(cached, DECISIVE) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        AnswerConfig(decisive_value=0.5)  # would send "no roadwork" for a roadwork decision


@pytest.mark.slow
def test_on_consensus_tasks_a_decisive_answer_earns_more_and_on_known_labels_the_same():
    """Simulated experts: the miner's calibrated answers are right ~80% of the time, hesitantly (0.55-0.75)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 500)
    logits = (2 * labels - 1) * 1.2 + rng.normal(0, 1.4, labels.size)
    calibrated = 1 / (1 + np.exp(-0.5 * logits))  # hesitant: rarely beyond 0.75
    decisive = np.where(calibrated > 0.5, 0.99, 0.01)
    crowd = np.column_stack([logits + rng.normal(0, 1.0, labels.size) for _ in range(3)])
    common = {"trials": 3000, "seed": 1, "population": crowd}
    none = {p: estimate_reward(labels, a, consensus=ConsensusModel(share=0.0), **common)
            for p, a in (("calibrated", calibrated), ("decisive", decisive))}
    assert none["calibrated"].mean == pytest.approx(none["decisive"].mean)  # binarised the same: scored the same
    half = {p: estimate_reward(labels, a, consensus=ConsensusModel(share=0.5), **common)
            for p, a in (("calibrated", calibrated), ("decisive", decisive))}
    assert half["decisive"].consensus_share == 0.5
    assert half["decisive"].mean > half["calibrated"].mean + 0.01, half
