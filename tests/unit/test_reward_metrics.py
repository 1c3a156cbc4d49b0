"""The validators' reward and the report's metrics, against straightforward re-implementations."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, matthews_corrcoef

from sn72_tools.evaluation.metrics import binary_metrics, expected_calibration_error
from sn72_tools.evaluation.reward import estimate_reward, window_rewards
from sn72_tools.evaluation.scoring import mcc


def tracker_reward(labels: list[int], predictions: list[float]) -> float:
    """The validator's bookkeeping for the last round (natix MinerPerformanceTracker + get_rewards)."""
    history_p: deque[float] = deque(maxlen=100)
    history_y: deque[int] = deque(maxlen=100)
    for y, p in zip(labels, predictions, strict=True):
        history_p.append(p)
        history_y.append(y)

    def metrics(window: int) -> tuple[float, float]:
        ps, ys = list(history_p)[-window:], list(history_y)[-window:]
        keep = [i for i, v in enumerate(ps) if v != -1]
        if not keep:
            return 0.0, 0.0
        yk, pk = np.array([ys[i] for i in keep]), np.round(np.array([ps[i] for i in keep]))
        m = max(0.0, matthews_corrcoef(yk, pk)) if len(np.unique(yk)) > 1 else 0.0
        return m, accuracy_score(yk, pk)

    if predictions[-1] == -1:
        return 0.0
    return (0.5 * metrics(100)[0] + 0.5 * metrics(10)[1]) ** 3


answer = st.one_of(st.just(-1.0), st.just(0.5), st.floats(0.0, 1.0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), answer), min_size=100, max_size=130))
def test_window_rewards_match_the_validators_bookkeeping(rounds):
    labels, predictions = [y for y, _ in rounds], [p for _, p in rounds]
    vectorised = window_rewards(np.array([labels]), np.array([predictions]))[0]
    assert vectorised == pytest.approx(tracker_reward(labels, predictions), abs=1e-12)


def test_reward_extremes_and_how_late_answers_count():
    labels = np.array([0, 1] * 200)
    perfect = estimate_reward(labels, labels.astype(float), trials=500)
    assert perfect is not None and perfect.mean == 1.0 and perfect.p5 == 1.0
    constant = estimate_reward(labels, np.full(labels.size, 0.5), trials=500)  # 0.5 rounds to 0: always "none"
    assert constant is not None and constant.mean == pytest.approx(0.25**3, abs=0.01)  # MCC 0, accuracy ~0.5
    late = estimate_reward(labels, labels.astype(float), late_rate=0.2, trials=4000)
    assert late is not None and late.mean == pytest.approx(0.8, abs=0.03)  # late rounds score 0; the rest stay 1
    prior = estimate_reward(labels, labels.astype(float), prior_rate=0.5, trials=2000)
    assert prior is not None and 0.2 < prior.mean < 0.5  # half the answers are the prior's "none"
    assert estimate_reward(np.ones(10, dtype=int), np.ones(10)) is None  # uniform labels cannot be drawn


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0.0, 1.0)), min_size=2, max_size=60))
def test_metrics_agree_with_their_confusion_matrix_and_sklearn(pairs):
    labels = np.array([y for y, _ in pairs])
    probabilities = np.array([p for _, p in pairs])
    m = binary_metrics(labels, probabilities)
    c = m.confusion
    assert c["tn"] + c["fp"] + c["fn"] + c["tp"] == m.n == len(pairs)
    assert m.accuracy == pytest.approx((c["tn"] + c["tp"]) / m.n)
    assert m.positives == c["fn"] + c["tp"]
    rounded = np.round(probabilities)
    if len(set(labels.tolist())) == 2:
        assert m.mcc == pytest.approx(matthews_corrcoef(labels, rounded), abs=1e-12)
        assert m.mcc == pytest.approx(mcc(labels, probabilities), abs=1e-12)
    else:
        assert m.mcc is None and any("MCC undefined" in note for note in m.notes)


def test_undefined_metrics_are_said_so_not_zero():
    one_class = binary_metrics(np.ones(5, dtype=int), np.array([0.9, 0.8, 0.2, 0.6, 0.7]))
    assert one_class.mcc is None and one_class.roc_auc is None
    assert "MCC undefined: the labels hold only class 1 (validators would score 0)" in one_class.notes
    constant = binary_metrics(np.array([0, 1, 0, 1]), np.full(4, 0.5))
    assert constant.mcc == 0.0 and constant.precision is None
    assert any("validators score MCC 0" in note for note in constant.notes)
    with pytest.raises(ValueError, match="no answers"):
        binary_metrics(np.array([], dtype=int), np.array([]))


def test_expected_calibration_error_separates_calibrated_from_overconfident():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    labels = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert expected_calibration_error(labels, p) < 0.02
    overconfident = np.where(p > 0.5, 0.99, 0.01)
    assert expected_calibration_error(labels, overconfident) > 0.2
