"""neurons/guards.py for any caller: blacklist, priority and the rate limiter never raise, whatever the hotkey.

The hotkey comes from an unsigned header; the guards see it before anything is verified, so every string (and
none at all) must get an answer, and spraying hotkeys must not grow the limiter without bound. The HTTP layer's
request slots keep their per-address share whatever callers arrive, leave or give up.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurons.chain import MetagraphSnapshot, Neuron
from neurons.guards import GuardPolicy, TokenBucketLimiter, blacklist, priority
from sn72_lab.hostile.target import keypair

pytestmark = pytest.mark.security

VALIDATOR, PEER, POOR = (keypair(name).ss58_address for name in ("guards-validator", "guards-peer", "guards-poor"))
SNAPSHOT = MetagraphSnapshot.of(72, [Neuron(0, VALIDATOR, True, 5000.0), Neuron(1, PEER, False, 10.0),
                                     Neuron(2, POOR, True, 0.5)])
HOTKEYS = st.one_of(
    st.sampled_from([VALIDATOR, PEER, POOR, "", " ", VALIDATOR + " ", VALIDATOR.lower(), "None", "null"]),
    st.text(max_size=64),
    st.text(st.characters(codec=None, categories=None), max_size=64),  # surrogates, controls, anything
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),  # what an HTTP header can carry
    st.integers(10_000, 100_000).map(lambda n: "5" * n),  # a hotkey header of any length
)
POLICIES = st.builds(
    GuardPolicy,
    allow_non_validators=st.booleans(),
    min_stake=st.floats(0.0, 1e7, allow_nan=False),
    allowed_hotkeys=st.frozensets(st.one_of(st.text(max_size=8), st.sampled_from([VALIDATOR, PEER])), max_size=3),
    denied_hotkeys=st.frozensets(st.one_of(st.text(max_size=8), st.sampled_from([VALIDATOR, PEER])), max_size=3),
)
SETTINGS = settings(max_examples=300, deadline=None)


@SETTINGS
@given(st.one_of(st.none(), HOTKEYS), POLICIES)
def test_blacklist_answers_every_caller(hotkey, policy):
    refused, reason, code = blacklist(hotkey, SNAPSHOT, policy)
    assert isinstance(refused, bool) and isinstance(reason, str) and reason and code.isidentifier()
    if not hotkey or hotkey in policy.denied_hotkeys:
        assert refused
    elif SNAPSHOT.get(hotkey) is None and hotkey not in policy.allowed_hotkeys:
        assert refused  # strangers are never answered


@SETTINGS
@given(st.one_of(st.none(), HOTKEYS))
def test_priority_is_a_finite_stake_for_every_caller(hotkey):
    value = priority(hotkey, SNAPSHOT)
    assert isinstance(value, float) and math.isfinite(value) and value >= 0.0


@SETTINGS
@given(st.lists(st.tuples(HOTKEYS, st.floats(0.0, 1000.0, allow_nan=False)), max_size=300))
def test_the_limiter_answers_every_caller_and_stays_bounded(calls):
    limiter = TokenBucketLimiter(rate_per_s=2.0, burst=20.0, max_hotkeys=32)
    now_s = 0.0
    for hotkey, step_s in calls:
        now_s += step_s
        assert isinstance(limiter.allow(hotkey, now_s), bool)
    assert len(limiter._buckets) <= 32  # hotkey spraying cannot grow it


@pytest.mark.slow
@SETTINGS
@given(st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=1, max_size=200))
def test_one_hotkey_never_gets_more_than_its_burst_plus_its_rate(steps_s):
    limiter = TokenBucketLimiter(rate_per_s=2.0, burst=20.0)
    now_s, allowed = 0.0, 0
    for step_s in steps_s:
        now_s += step_s
        allowed += limiter.allow(VALIDATOR, now_s)
    assert allowed <= 20 + 2.0 * now_s + 1e-9


# -- the HTTP layer's request slots (neurons/request_slots.py) -------------------------------------------------------
SLOT_PLANS = st.lists(st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),  # caller
                                st.integers(0, 3),  # steps it holds its slot
                                st.booleans()),  # gives up (cancelled) if not done after the first step
                      min_size=1, max_size=40)


@pytest.mark.slow
@SETTINGS
@given(SLOT_PLANS, st.integers(1, 6), st.integers(1, 6))
def test_request_slots_hold_their_bounds_for_any_callers(plan, total, per_caller):
    """Whatever arrives, leaves or gives up: never more than `total` slots held, never more than `per_caller` by one
    caller; everyone who waits is served; nothing is left behind (no caller entry, no slot, no waiter)."""
    from neurons.request_slots import RequestSlots

    async def scenario() -> None:
        slots = RequestSlots(total, per_caller)
        held: dict[str, int] = {}
        served: list[int] = []

        async def request(index: int, caller: str, steps: int) -> None:
            async with slots.turn(caller):
                held[caller] = held.get(caller, 0) + 1
                try:
                    assert sum(held.values()) <= total and held[caller] <= per_caller, held
                    served.append(index)
                    for _ in range(steps):
                        await asyncio.sleep(0)
                finally:
                    held[caller] -= 1

        tasks = [asyncio.ensure_future(request(i, caller, steps)) for i, (caller, steps, _) in enumerate(plan)]
        await asyncio.sleep(0)
        quitters = [task for task, (_, _, gives_up) in zip(tasks, plan, strict=True) if gives_up and not task.done()]
        for task in quitters:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stayed = [i for i, task in enumerate(tasks) if not task.cancelled()]
        assert sorted(served) == sorted(set(served)) and set(stayed) <= set(served)
        assert slots.callers() == 0 and slots.waiting == 0 and not any(held.values())
        async with slots.turn("after"):  # every slot came back: a fresh caller is served at once
            pass

    asyncio.run(scenario())
