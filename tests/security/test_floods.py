"""Floods against the real miner with the production limits (2/s, burst 20), an honest validator beside them.

Defect 1 of the first red-team pass (docs/security.md): unsigned requests claiming a validator's hotkey spent that
validator's rate budget, because the bucket was charged before the signature was checked. Defect 6: one log line per
refusal.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sn72_lab.hostile import heavy
from sn72_lab.hostile.wire import HostileRequest
from sn72_tools.client import encode_jpeg, synthetic_image

pytestmark = [pytest.mark.security, pytest.mark.slow]  # every test here attacks the miner subprocess


def test_a_spoofed_flood_does_not_cut_the_validator_off(hostile):
    # The 100 spoofed requests come in 10 s (10/s) beside a validator at 2/s, its full rate: charged to its
    # bucket (burst 20, 2/s), they would empty it within ~3 s and cut it off for the rest of the window.
    context = hostile.context(flood_s=10.0, flood_rate_per_s=10.0)
    with hostile.survives(), hostile.validator_load(rate_per_s=2.0) as load:
        started_s = time.monotonic()
        observation = asyncio.run(heavy.spoofed_flood(context))
        stats = load.stats(started_s, time.monotonic())
    assert stats.sent >= 12  # gaps of 0.25-0.75 s over ~10 s
    assert stats.answer_rate >= 0.95, f"the validator during the spoofed flood: {stats.summary()} {stats.statuses}"
    assert len(observation.replies) == 100
    assert {r.status for r in observation.replies} == {401}, observation.statuses()


def test_a_spoofed_flood_leaves_the_validators_budget_untouched(hostile):
    """Right after 100 unsigned requests in its name, the validator still has its whole burst."""
    spoof = HostileRequest(claim_hotkey=hostile.cast.validator.hotkey.ss58_address, image="AAAA")
    asyncio.run(heavy.storm(hostile.context(), lambda i: spoof, count=100, rate_per_s=None))
    with hostile.survives():
        outcomes = hostile.ask(hostile.cast.validator.hotkey,
                               [encode_jpeg(synthetic_image(500_000 + i)) for i in range(12)])
    assert [o.status_code for o in outcomes] == [200] * 12, [(o.status_code, o.message) for o in outcomes]


def test_a_signed_flood_from_one_hotkey_is_limited_and_others_are_unaffected(hostile):
    with hostile.survives(), hostile.validator_load(rate_per_s=1.0) as load:
        started_s = time.monotonic()
        observation = hostile.attack("signed-flood-one-hotkey", attacker=hostile.flood_prober(0), burst=20.0)
        time.sleep(max(0.0, started_s + 4.0 - time.monotonic()))  # a few honest requests in the window
        stats = load.stats(started_s, time.monotonic())
    statuses = [r.status for r in observation.replies]
    assert not observation.problems, (observation.problems, observation.statuses())
    assert statuses.count(200) >= 18, observation.statuses()  # its burst is served
    assert stats.sent >= 2 and stats.answered == stats.sent, stats.summary()  # jittered, ~1/s


def test_refusals_are_counted_by_reason_and_not_logged_one_by_one(hostile):
    before_counts = hostile.refusals()
    before_lines = len(hostile.log())
    with hostile.survives():
        observation = asyncio.run(heavy.refusal_flood(hostile.context(), count=500))
    logged = hostile.settled_log(before_lines)
    assert sorted({r.status for r in observation.replies}) == [401, 403], observation.statuses()
    assert len(logged) <= 5, f"{len(logged)} lines logged for 500 refusals, e.g. {logged[:3]}"
    after = hostile.refusals()
    delta = {reason: after.get(reason, 0) - before_counts.get(reason, 0) for reason in after}
    assert delta.get("refused_unverified") == 250, delta
    blacklisted = ("refused_unregistered", "refused_no_permit", "refused_denied", "refused_no_hotkey",
                   "refused_low_stake")  # the blacklist's reasons, counted apart
    assert sum(delta.get(reason, 0) for reason in blacklisted) == 250, delta

