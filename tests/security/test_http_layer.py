"""The HTTP layer under the axon: body size, header and body read timeouts, connection caps, descriptors.

The miner runs with axon.max_request_bytes 16 MB, header_timeout_s 2, body_timeout_s 2, max_connections_per_ip 64
(neurons/hostile/target.py TEST_HTTP_LIMITS). Connection-heavy attacks come from 127.0.0.2, the honest validator
from 127.0.0.1, so a per-address cap must stop the one and not the other.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neurons.hostile.target import TEST_HTTP_LIMITS, known_axon_keys
from neurons.hostile.wire import CLOSED

pytestmark = pytest.mark.security

HEADER_TIMEOUT_S = TEST_HTTP_LIMITS["header_timeout_s"]
BODY_TIMEOUT_S = TEST_HTTP_LIMITS["body_timeout_s"]
PER_IP = TEST_HTTP_LIMITS["max_connections_per_ip"]
SLACK_S = 2.5  # a loaded 2-core machine


def attack_beside_validator(hostile, name, **overrides):
    """The attack, with every honest request sent meanwhile answered."""
    observation, stats = hostile.attack_beside_validator(name, **overrides)
    assert stats.sent >= 2 and stats.answered == stats.sent, f"the validator during {name}: {stats.summary()}"
    return observation


def test_the_configuration_has_the_http_limits():
    missing = sorted(set(TEST_HTTP_LIMITS) - known_axon_keys())
    assert not missing, f"axon config keys missing: {missing}"


def test_the_miner_raises_its_own_open_files_limit(hostile):
    """Started with the default soft limit of 1024 (the hard limit is higher), the miner raises it itself."""
    line = next(x for x in Path(f"/proc/{hostile.pid}/limits").read_text().splitlines()
                if x.startswith("Max open files"))
    soft, hard = (int(v) if v.isdigit() else float("inf") for v in line.split()[3:5])
    assert hard > 1024, "this machine's hard limit leaves nothing to raise"
    assert soft > 1024, line


@pytest.mark.parametrize("name", ["sent-100MB-body", "chunked-100MB-body"])
def test_bodies_over_the_limit_are_refused(hostile, name):
    observation = attack_beside_validator(hostile, name)
    assert not observation.problems, (observation.problems, observation.statuses())


def test_slow_headers_are_cut_off_after_the_header_timeout(hostile):
    observation = attack_beside_validator(hostile, "slow-headers", slow_give_up_s=HEADER_TIMEOUT_S + 6)
    assert not observation.problems, (observation.problems, observation.statuses())
    slowest = max(r.elapsed_s for r in observation.replies)
    assert slowest <= HEADER_TIMEOUT_S + SLACK_S, f"slow clients held their connection {slowest:.1f} s"


def test_a_trickled_body_is_cut_off_after_the_body_timeout(hostile):
    observation = attack_beside_validator(hostile, "slow-body", slow_give_up_s=BODY_TIMEOUT_S + 6)
    assert not observation.problems, (observation.problems, observation.statuses())
    slowest = max(r.elapsed_s for r in observation.replies)
    assert slowest <= BODY_TIMEOUT_S + SLACK_S, f"a trickled body held its connection {slowest:.1f} s"


def test_idle_connections_beyond_the_per_address_cap_are_closed_at_once(hostile, many_descriptors):
    since = len(hostile.log())
    observation = attack_beside_validator(hostile, "idle-connections", idle_connections=1100,
                                          max_connections_per_ip=PER_IP, slow_give_up_s=HEADER_TIMEOUT_S + 6)
    assert not observation.problems, (observation.problems, observation.statuses())
    assert all(r.status == CLOSED for r in observation.replies)
    assert not [line for line in hostile.log(since) if "Too many open files" in line]
