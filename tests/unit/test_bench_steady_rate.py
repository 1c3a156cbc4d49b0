"""`sn72-bench`'s steady rate: answers a second over the middle of a run, without its start and its tail."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sn72_lab.bench import steady_rps


def closed_loop_ends(rate: float, count: int, ramp_s: float, tail_s: float) -> list[float]:
    """Answer times of a run at `rate` a second, the first tenth spread over a slow start of `ramp_s` and the last
    tenth over a drain of `tail_s` (what a closed loop of new connections looks like)."""
    head, tail = count // 10, count // 10
    middle = count - head - tail
    ends = [ramp_s * (i + 1) / head for i in range(head)]
    ends += [ramp_s + (i + 1) / rate for i in range(middle)]
    ends += [ends[-1] + tail_s * (i + 1) / tail for i in range(tail)]
    return ends


def test_the_middle_rate_is_the_run_rate_without_its_start_and_tail():
    ends = closed_loop_ends(rate=2000.0, count=10_000, ramp_s=1.5, tail_s=0.8)
    whole = len(ends) / ends[-1]
    assert whole < 1700  # start and tail weigh on requests / elapsed
    assert steady_rps(ends) == pytest.approx(2000.0, rel=0.01)


def test_the_order_answers_arrive_in_does_not_matter():
    ends = closed_loop_ends(rate=500.0, count=1000, ramp_s=0.3, tail_s=0.2)
    shuffled = random.Random(7).sample(ends, len(ends))
    assert steady_rps(shuffled) == steady_rps(ends)


@pytest.mark.parametrize("ends", [[], [1.0], [1.0] * 50, [0.0, 1.0, 2.0]])
def test_too_few_or_simultaneous_answers_give_no_rate(ends):
    assert steady_rps(ends) is None


@given(rate=st.floats(10.0, 1e5), count=st.integers(20, 5000), start=st.floats(0.0, 1e6))
def test_evenly_spaced_answers_give_their_rate(rate, count, start):
    ends = [start + i / rate for i in range(count)]
    assert steady_rps(ends) == pytest.approx(rate, rel=1e-6)
