"""Guards accept any caller without raising; rate limits are per hotkey."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from neurons.chain import MetagraphSnapshot, Neuron, parse_metagraph_json
from neurons.guards import GuardPolicy, TokenBucketLimiter, blacklist, priority

SNAPSHOT = MetagraphSnapshot.of(72, [Neuron(0, "miner", False, 0.0), Neuron(1, "val", True, 5000.0),
                                     Neuron(2, "small-val", True, 10.0), Neuron(3, "peer", False, 50.0)])


def test_membership_permit_and_stake_rules():
    policy = GuardPolicy(min_stake=100.0)
    assert blacklist("val", SNAPSHOT, policy)[:2] == (False, "registered caller")
    assert blacklist("stranger", SNAPSHOT, policy)[0]
    assert blacklist("peer", SNAPSHOT, policy)[:2] == (True, "caller has no validator permit")
    assert "below the minimum" in blacklist("small-val", SNAPSHOT, policy)[1]
    assert not blacklist("peer", SNAPSHOT, GuardPolicy(allow_non_validators=True))[0]
    assert not blacklist("stranger", SNAPSHOT, GuardPolicy(allowed_hotkeys=frozenset({"stranger"})))[0]
    assert blacklist("val", SNAPSHOT, GuardPolicy(denied_hotkeys=frozenset({"val"})))[0]
    assert blacklist(None, SNAPSHOT, policy)[0] and blacklist("", SNAPSHOT, policy)[0]


@given(st.one_of(st.none(), st.text(max_size=80)))
def test_any_caller_is_judged_without_raising(hotkey):
    refused, reason, code = blacklist(hotkey, SNAPSHOT, GuardPolicy())
    assert isinstance(refused, bool) and reason and code.isidentifier()
    assert priority(hotkey, SNAPSHOT) >= 0.0


def test_priority_is_stake():
    assert priority("val", SNAPSHOT) == 5000.0 and priority("nobody", SNAPSHOT) == 0.0


def test_token_bucket_allows_bursts_then_the_sustained_rate_per_hotkey():
    limiter = TokenBucketLimiter(rate_per_s=2.0, burst=3.0)
    assert [limiter.allow("a", now_s=0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", now_s=0.0)  # another caller is unaffected
    assert not limiter.allow("a", now_s=0.4) and limiter.allow("a", now_s=0.6)
    assert TokenBucketLimiter(rate_per_s=0.0, burst=1.0).allow("x")


def test_metagraph_file_errors_are_clear():
    import pytest

    with pytest.raises(ValueError, match="neurons"):
        parse_metagraph_json({"netuid": 72})
    with pytest.raises(ValueError, match="neuron #0"):
        parse_metagraph_json({"neurons": [{"uid": 0}]})
    assert parse_metagraph_json({"neurons": [{"hotkey": "h", "stake": "12"}]}).get("h").stake == 12.0
