"""The windowed quantile and the three estimators built on it give what they gave when they sorted on every read.

The references below are the estimators' former code, kept verbatim (a deque of (measured at, seconds), filtered
and sorted at each read); hypothesis drives both with the same random measurements and reads, through window
eviction, the latency horizon and decay.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.latency import LatencyTracker
from cascade.windowed_quantile import Sample, WindowedQuantile
from neurons.deadlines import ResponseLag, ServiceTime, decay_rank, decayed


def _old_quantile(values: list[float], quantile: float) -> float:
    values.sort()
    return values[min(len(values) - 1, int(quantile * len(values)))]


class _OldLatencyTracker:
    def __init__(self, window: int, quantile: float, initial_s: float, horizon_s: float) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)
        self._quantile, self._initial_s, self._horizon_s = quantile, initial_s, horizon_s

    def record(self, seconds: float, now_s: float) -> None:
        self._samples.append((now_s, seconds))

    def estimate_s(self, now_s: float) -> float:
        live = [seconds for at_s, seconds in self._samples if now_s - at_s <= self._horizon_s]
        if not live:
            return self._initial_s
        if len(live) < 3:
            return max(live)
        return _old_quantile(live, self._quantile)


def _old_decayed_quantile(samples: list[tuple[float, float]], now_s: float, quantile: float,
                          half_life_s: float) -> float:
    return _old_quantile([decayed(seconds, now_s - at_s, half_life_s) for at_s, seconds in samples], quantile)


durations = st.floats(0.0, 60.0, allow_nan=False)
steps = st.floats(0.0, 5.0, allow_nan=False)  # time between two events: the clock never goes back
quantiles = st.sampled_from([0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0])


@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=200), window=st.integers(1, 40),
       quantile=st.floats(0.0, 1.0))
def test_the_quantile_is_the_sorted_windows_element_after_every_measurement(values, window, quantile):
    kept = WindowedQuantile(window, quantile)
    for i, value in enumerate(values):
        kept.add(float(i), value)
        recent = values[max(0, i + 1 - window):i + 1]
        ordered = np.sort(np.array(recent))
        expected = ordered[min(len(recent) - 1, int(quantile * len(recent)))]
        chosen = kept.at_quantile()
        assert chosen is not None and chosen.seconds == expected == _old_quantile(list(recent), quantile)
        assert chosen in [Sample(float(j), value) for j, value in enumerate(values)][max(0, i + 1 - window):i + 1]
        assert kept.largest().seconds == max(recent)
        assert [s.seconds for s in kept] == recent and kept.oldest().seconds == recent[0]
        assert len(kept) == len(recent)


def test_an_empty_window_has_no_quantile_and_bad_arguments_are_refused():
    kept = WindowedQuantile(4, 0.9)
    assert kept.at_quantile() is None and kept.largest() is None and kept.oldest() is None and len(kept) == 0
    with pytest.raises(ValueError):
        WindowedQuantile(0, 0.5)
    with pytest.raises(ValueError):
        WindowedQuantile(4, 1.5)


@settings(max_examples=300)
@given(events=st.lists(st.tuples(st.booleans(), steps, durations), max_size=120), window=st.integers(1, 20),
       quantile=quantiles, horizon_s=st.floats(0.5, 30.0))
def test_the_latency_tracker_estimates_as_before_through_eviction_and_the_horizon(events, window, quantile,
                                                                                  horizon_s):
    new = LatencyTracker(window, quantile, 0.05, horizon_s)
    old = _OldLatencyTracker(window, quantile, 0.05, horizon_s)
    now_s = 1000.0
    for is_record, step_s, seconds in events:
        now_s += step_s
        if is_record:
            new.record(seconds, now_s)
            old.record(seconds, now_s)
        assert new.estimate_s(now_s) == old.estimate_s(now_s)


@settings(max_examples=300)
@given(events=st.lists(st.tuples(st.booleans(), steps, durations, st.sampled_from(["a", "b", "c"])), max_size=120),
       window=st.integers(1, 20), quantile=quantiles, half_life_s=st.floats(0.5, 20.0),
       start_s=st.floats(0.0, 1e6))
def test_decayed_estimates_are_as_before_through_eviction_and_ageing(events, window, quantile, half_life_s,
                                                                     start_s):
    service = ServiceTime(window, quantile, half_life_s)
    lag = ResponseLag(0.0, math.inf, window, quantile, half_life_s)
    kept: dict[str, deque[tuple[float, float]]] = {}
    lags: deque[tuple[float, float]] = deque(maxlen=window)
    now_s = start_s
    for is_record, step_s, seconds, caller in events:
        now_s += step_s
        if is_record:
            service.record(caller, seconds, now_s)
            kept.setdefault(caller, deque(maxlen=window)).append((now_s, seconds))
            lag.record(seconds, now_s)
            lags.append((now_s, seconds))
        expected = _old_decayed_quantile(list(kept[caller]), now_s, quantile, half_life_s) if caller in kept else 0.0
        # Equal up to rounding: the rank orders what the old code computed, and two values within a few ulps of
        # each other may come out in the other order.
        assert math.isclose(service.estimate_s(caller, now_s), expected, rel_tol=1e-9, abs_tol=1e-300)
        if lags:
            old_reserve = max(0.0, 1.5 * _old_decayed_quantile(list(lags), now_s, quantile, half_life_s) + 0.05)
            assert math.isclose(lag.reserve_s(now_s), old_reserve, rel_tol=1e-9)


@given(samples=st.lists(st.tuples(st.floats(0.0, 100.0), durations), min_size=1, max_size=30),
       later_s=st.floats(0.0, 200.0))
def test_a_read_from_before_the_newest_measurement_is_the_old_sort_exactly(samples, later_s):
    """A clock read before a measurement was recorded (never on the request path): the whole window, sorted."""
    service = ServiceTime(32, 0.75, 5.0)
    for at_s, seconds in samples:
        service.record("a", seconds, at_s)
    now_s = min(at_s for at_s, _ in samples) + later_s
    expected = _old_decayed_quantile(samples[-32:], now_s, 0.75, 5.0)
    if now_s < max(at_s for at_s, _ in samples[-32:]):
        assert service.estimate_s("a", now_s) == expected
    else:
        assert math.isclose(service.estimate_s("a", now_s), expected, rel_tol=1e-9, abs_tol=1e-300)


@given(a=st.tuples(st.floats(0.0, 1e4), durations), b=st.tuples(st.floats(0.0, 1e4), durations),
       half_life_s=st.floats(0.5, 20.0), after_s=st.floats(0.0, 1e3))
def test_the_decay_rank_orders_as_the_decayed_values_do_at_any_later_time(a, b, half_life_s, after_s):
    now_s = max(a[0], b[0]) + after_s
    worth_a, worth_b = (decayed(seconds, now_s - at_s, half_life_s) for at_s, seconds in (a, b))
    rank_a, rank_b = (decay_rank(at_s, seconds, half_life_s) for at_s, seconds in (a, b))
    if not math.isclose(worth_a, worth_b, rel_tol=1e-9, abs_tol=1e-300):
        assert (rank_a < rank_b) == (worth_a < worth_b)
