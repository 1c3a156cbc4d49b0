"""The one "can it still make it" rule at its boundaries, and the same outcomes as each caller's former expression."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cascade.in_time import fits, in_time, time_left_s

NOW_S = 1000.0
MICROSECOND = 1e-6


def test_ending_exactly_at_the_deadline_is_in_time_unless_the_caller_counts_it_late():
    assert in_time(NOW_S, 0.25, NOW_S + 0.25)
    assert not in_time(NOW_S, 0.25, NOW_S + 0.25, at_deadline_is_late=True)  # the scheduler's expiry
    assert fits(0.25, 0.25)  # the level plan


def test_one_microsecond_over_is_late_for_every_caller():
    assert not in_time(NOW_S + MICROSECOND, 0.25, NOW_S + 0.25)
    assert not in_time(NOW_S + MICROSECOND, 0.25, NOW_S + 0.25, at_deadline_is_late=True)
    assert not fits(0.25 + MICROSECOND, 0.25)
    assert in_time(NOW_S - MICROSECOND, 0.25, NOW_S + 0.25, at_deadline_is_late=True)  # and one under is in time


def test_an_unknown_need_is_judged_by_the_deadline_alone():
    assert in_time(NOW_S, None, NOW_S) and not in_time(NOW_S, None, NOW_S, at_deadline_is_late=True)
    assert not in_time(NOW_S + MICROSECOND, None, NOW_S)
    assert fits(None, MICROSECOND) and not fits(None, 0.0) and not fits(None, -MICROSECOND)
    assert in_time(NOW_S, None, NOW_S + 5.0) == in_time(NOW_S, 0.0, NOW_S + 5.0)


def test_the_plan_needs_some_time_left_even_for_work_that_takes_none():
    assert not fits(0.0, 0.0) and fits(0.0, MICROSECOND)
    assert fits(1e9, float("inf"))  # eval mode: no skipping for time


def test_time_left_keeps_back_what_is_asked_and_goes_negative_past_the_deadline():
    assert time_left_s(NOW_S + 1.0, NOW_S) == 1.0
    assert time_left_s(NOW_S + 1.0, NOW_S, 0.25) == 0.75
    assert time_left_s(NOW_S, NOW_S + 2.0) == -2.0


clock = st.floats(0.0, 1e7, allow_nan=False)
need = st.floats(0.0, 1e3, allow_nan=False)


@given(now_s=clock, need_s=need, deadline_s=clock, guard_s=st.floats(0.0, 5.0))
def test_each_caller_decides_exactly_as_its_former_expression(now_s, need_s, deadline_s, guard_s):
    # neurons/http_guard.py refuses when `turn_s + estimate > deadline`
    assert in_time(now_s, need_s, deadline_s) == (not now_s + need_s > deadline_s)
    # cascade/scheduler.py expired an item when `item.deadline_s <= now + compute_s`
    assert (not in_time(now_s, need_s, deadline_s, at_deadline_is_late=True)) == (deadline_s <= now_s + need_s)
    # cascade/lifetime.py gave the plan `request.deadline_s - now_s - self.guard_s`, and the plan ran the level
    # when `time_left_s > 0 and expected_s <= time_left_s`
    left_s = time_left_s(deadline_s, now_s, guard_s)
    assert left_s == deadline_s - now_s - guard_s
    assert fits(need_s, left_s) == (left_s > 0 and need_s <= left_s)
    # cascade/admission.py waited `max(0.0, deadline_s - now_s)` for a slot
    assert max(0.0, time_left_s(deadline_s, now_s)) == max(0.0, deadline_s - now_s)
