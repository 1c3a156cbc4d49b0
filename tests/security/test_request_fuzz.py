"""The request fuzzer in the suite: a few hundred fuzzed requests against a miner served in process (seconds).

`python -m sn72_lab.fuzz --minutes 5` runs the same property for minutes (coverage-guided with atheris where it is
installed). Each example is a validator's request with parts made odd (sn72_lab/fuzz/cases.py); every one must get
an answer below 500 (a 200 with a prediction in [0, 1] and no image), be reported exactly once with the status
the client saw, and count no internal error; the miner must answer a plain request afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sn72_lab.fuzz.target import FuzzTarget

pytestmark = pytest.mark.security

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    target = FuzzTarget(tmp_path_factory.mktemp("fuzz"))
    yield target
    target.close()


@pytest.mark.slow
def test_fuzzed_requests_are_answered_below_500_and_reported_once(fuzz):
    @FUZZ
    @given(st.binary(max_size=2048))
    def one(data: bytes) -> None:
        fuzz.check(data)

    one()
    assert fuzz.sent >= 300
    assert fuzz.healthy(), "the miner no longer answers a plain validator request"


def test_the_fuzz_cases_reach_every_layer(fuzz):
    """The byte-to-request mapping is not stuck in one corner: answers from the HTTP layer, the guards,
    verification, the body check, the decoder and the engine all occur within a few hundred inputs."""
    import random

    rng = random.Random(7)
    statuses = {fuzz.check(bytes(rng.randrange(256) for _ in range(rng.randrange(8, 200)))).status
                for _ in range(200)}
    assert {200, 400, 401, 403} <= statuses, statuses
