"""Every single-request attack of the catalogue against the real miner: the expected status, then the miner alive.

Identity and signature tampering, nonce games, routes, malformed headers and bodies, hostile images, oversized
header blocks (neurons/hostile/catalogue.py says how each is sent). The heavy ones (floods, connections, slow
clients, big bodies) have their own tests with an honest validator running beside them.
"""

from __future__ import annotations

import pytest

from neurons.hostile.catalogue import catalogue

pytestmark = pytest.mark.security

SINGLE = [attack for attack in catalogue() if not attack.heavy]


def test_the_catalogue_is_large_enough():
    assert len(catalogue()) >= 40 and len(SINGLE) >= 40


@pytest.mark.parametrize("attack", SINGLE, ids=[a.name for a in SINGLE])
def test_attack_gets_the_expected_answer(hostile, attack):
    with hostile.survives():
        observation = hostile.attack(attack.name)
    seen = [(r.status, r.message[:160]) for r in observation.replies]
    assert not observation.problems, f"{attack.how}: {observation.problems}; seen {seen}"
