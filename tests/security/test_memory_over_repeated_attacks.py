"""Repeated hostile requests leave the miner's resident memory where the first round of them left it.

A leak per request is what an attacker can turn into an out-of-memory kill: each attack's own check
(`HostileMiner.survives`, < 200 MB) misses a small one, which only adds up over many requests. This test brings its
own workload and its own baseline, so it means the same whatever ran before it on the shared miner
(tests/security/conftest.py) and in whatever order: one warm-up round of the attacks that make the miner allocate
most (decompression bombs, odd pixel formats, a huge header, huge JSON bodies; first requests allocate buffers,
arenas and caches that later ones reuse), its resident memory read, then ROUNDS more rounds, and the memory read again.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.security, pytest.mark.slow]

# Single requests (not `heavy`: no load beside them), each making the miner allocate far more than a request's size.
ALLOCATING = [
    "png-bomb", "jpeg-frame-bomb", "webp-canvas-bomb", "animation-2000-frames", "grey16-png", "rgb48-png",
    "cmyk-jpeg", "truncated-jpeg", "jpeg-fill-bytes", "jpeg-empty-comment-markers", "header-block-100KB",
    "json-deep-nesting", "json-1m-keys", "declared-100MB-body",
]  # not many-headers: 2 s a request (two thirds of a round) for the header path header-block-100KB takes too
ROUNDS = 5  # after the warm-up round: 70 allocating requests, ~1.2 s a round
GROWTH_LIMIT_MB = 32.0  # caught from ~0.5 MB leaked per request; a sound miner grows a few MB


def test_resident_memory_stays_level_over_repeated_attacks(hostile):
    def one_round() -> None:
        for name in ALLOCATING:
            observation = hostile.attack(name)
            assert not observation.problems, f"{name}: {observation.problems}; seen {observation.statuses()}"

    one_round()  # warm-up
    assert hostile.answers(), "the miner does not answer after the warm-up round"
    baseline_mb = hostile.rss_mb()
    for _ in range(ROUNDS):
        one_round()
    assert hostile.answers(), "the miner does not answer after the repeated attacks"
    growth_mb = hostile.rss_mb() - baseline_mb
    assert growth_mb < GROWTH_LIMIT_MB, (f"resident memory grew {growth_mb:.0f} MB over {ROUNDS} rounds of "
                                         f"{len(ALLOCATING)} allocating attacks after the warm-up round")
