"""The escalation fit of `sn72-bench traffic`: the engine's own pooling and exit rule send the planned share on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.config import CascadeConfig, LevelConfig
from cascade.consensus import Pooling, make_answer
from sn72_lab.escalation import fit

pytestmark = pytest.mark.bench  # the escalation fit of `sn72-bench traffic`


def engine_escalates(probabilities: list[float], fitted) -> list[bool]:
    """What the engine decides for each level-1 answer with the fitted settings written into a real cascade."""
    level = LevelConfig.model_validate({
        "name": "baseline", "exit_margin": fitted.exit_margin,
        "experts": [{"name": "vit", "backend": "hf_classifier", "model": "x",
                     "calibration": fitted.calibration()}],
    })
    last = LevelConfig.model_validate(
        {"name": "last", "exit_margin": 0.5, "experts": [{"name": "vlm", "backend": "vlm_transformers", "model": "y"}]})
    cascade = CascadeConfig(levels=[level, last])
    pooling = Pooling.from_config(cascade)
    expert = cascade.levels[0].experts[0]
    answers = ([make_answer(expert, 0, p)] for p in probabilities)
    return [not pooling.should_exit(0, pooling.level_probability(0, answer)) for answer in answers]


distinct = st.lists(st.floats(0.02, 0.98), min_size=5, max_size=120, unique=True)


@settings(max_examples=60, deadline=None)
@given(probabilities=distinct, target=st.sampled_from([0.1, 0.3, 0.5, 0.9]))
def test_the_engine_escalates_exactly_the_planned_images(probabilities, target):
    fitted = fit(probabilities, target)
    decisions = engine_escalates(probabilities, fitted)
    assert [i for i, d in enumerate(decisions) if d] == list(fitted.escalated)
    assert fitted.planned == pytest.approx(sum(decisions) / len(probabilities))
    # distinct level-1 answers can always be split at the wanted size
    wanted = min(len(probabilities) - 1, max(1, round(target * len(probabilities))))
    assert len(fitted.escalated) == wanted
    assert 0 < fitted.temperature <= 100 and abs(fitted.bias) <= 20 and 0 <= fitted.exit_margin <= 0.5


@settings(max_examples=30, deadline=None)
@given(centre=st.floats(-9.0, 9.0), spread=st.floats(1e-3, 1.0), target=st.sampled_from([0.1, 0.3]))
def test_answers_far_from_even_still_fit_within_the_calibration_bounds(centre, spread, target):
    """Random models answer around any log-odds; the bias bound (|b| <= 20) must not break the split."""
    import math

    logits = [centre + spread * (i / 59 - 0.5) for i in range(60)]
    probabilities = [1 / (1 + math.exp(-z)) for z in logits]
    fitted = fit(probabilities, target)
    assert len(fitted.escalated) == round(target * 60)
    assert engine_escalates(probabilities, fitted).count(True) == len(fitted.escalated)


def test_the_ends_and_ties():
    probabilities = [0.4, 0.45, 0.5, 0.55, 0.6]
    assert fit(probabilities, 1.0).escalated == (0, 1, 2, 3, 4) and fit(probabilities, 1.0).exit_margin == 0.5
    assert fit(probabilities, 0.0).escalated == () and fit(probabilities, 0.0).exit_margin == 0.0
    tied = [0.5] * 50 + [0.6] * 50  # two values only: the split falls between them, the nearest size possible
    assert len(fit(tied, 0.3).escalated) == 50
    with pytest.raises(ValueError, match="no level-1 answers"):
        fit([], 0.3)
