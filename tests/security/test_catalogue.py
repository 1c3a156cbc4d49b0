"""Every attack of the catalogue against the real miner.

Single-request attacks (identity and signature tampering, nonce games, routes and odd request lines, malformed
headers and bodies, hostile images, oversized header blocks, framing tricks): the expected status, then the miner
alive. sn72_lab/hostile/catalogue.py says how each is sent.

The heavy attacks of the second red-team pass (docs/security.md) run here in their small size beside the honest
validator and must pass the line (sn72_lab/hostile/measure.py), scaled for the suite: >= 99% of honest requests answered
in time with a model answer (not the prior), honest p99 <= 1 s, no 500, and the miner's peak resident memory during the
attack at most 150 MB above its level at the start (the script's line is 300 MB for the full-size images; the small ones
are 8 times fewer pixels, and 150 MB keeps room for the suite's other allocations). The older heavy attacks have their
own tests (test_floods.py, test_http_layer.py).
"""

from __future__ import annotations

import time

import pytest

from sn72_lab.hostile.catalogue import catalogue
from sn72_lab.hostile.load import LoadStats
from sn72_lab.hostile.measure import PassLine, ResourcePeaks, ResourceSampler
from sn72_lab.hostile.model import Observation

pytestmark = [pytest.mark.security, pytest.mark.slow]  # every test here attacks the miner subprocess

SINGLE = [attack for attack in catalogue() if not attack.heavy]
SMALL_LINE = PassLine(min_model_share=0.99, max_p99_ms=1000.0, max_server_errors=0, max_rss_growth_mb=150.0)
# Issue 25's heavy classes, by the defect they stand for (the others are single requests, above).
HEAVY_25 = {
    "progressive-jpeg-2000-scans": "1: decode cost, under the rate limit",
    "progressive-jpeg-99-scans": "1: decode cost just under the scan limit",
    "websocket-upgrades-then-honest": "4: upgrades leaked the address's connection count",
    "slow-bodies-holding-slots": "5: signed slow bodies holding request slots",
    "grey16-pngs-parallel": "7: 16-bit PNGs and the decode budget in bytes",
    "client-gone-accounting": "8: every response reported once, client-gone counted",
    "header-storm": "outside: header storms",
    "random-hotkey-flood": "outside: random-hotkey flood",
    "non-permit-flood": "outside: non-permit flood",
    "idle-connections-many-addresses": "outside: idle connections from many addresses",
}
ISSUE_25_SINGLE = ["old-version-signed-30s-ago", "old-version-signed-1h-ago", "old-version-signed-30d-ago",
                   "no-version-signed-1h-ago", "captured-request-replayed-old-version", "reordered-nonces-one-dendrite",
                   "nonce-400-digits", "path-percent-ff", "path-overlong-utf8", "path-emoji", "path-nul",
                   "head-method"]


def test_the_catalogue_holds_every_class_of_issue_25():
    by_name = {attack.name: attack for attack in catalogue()}
    assert len(by_name) >= 100 and len(SINGLE) >= 70
    assert all(by_name[name].heavy for name in HEAVY_25)
    assert all(not by_name[name].heavy for name in ISSUE_25_SINGLE)


@pytest.mark.parametrize("attack", SINGLE, ids=[a.name for a in SINGLE])
def test_attack_gets_the_expected_answer(hostile, attack):
    with hostile.survives():
        observation = hostile.attack(attack.name)
    seen = [(r.status, r.message[:160]) for r in observation.replies]
    assert not observation.problems, f"{attack.how}: {observation.problems}; seen {seen}"


def beside_validator(hostile, name: str, window_s: float = 4.0) -> tuple[Observation, LoadStats, ResourcePeaks]:
    """One attack (small size) while the honest validator sends 1.5 requests/s; its resources sampled throughout."""
    metrics = f"http://127.0.0.1:{hostile.process.metrics_port}/metrics"
    with ResourceSampler(hostile.pid) as sampler, hostile.validator_load(rate_per_s=1.5) as load:
        started_s = time.monotonic()
        observation = hostile.attack(name, full=False, metrics_url=metrics)
        time.sleep(max(0.0, started_s + window_s - time.monotonic()))
        stats = load.stats(started_s, time.monotonic())
    return observation, stats, sampler.peaks


@pytest.mark.parametrize("name", list(HEAVY_25), ids=list(HEAVY_25))
def test_heavy_attack_of_issue_25_passes_the_line(hostile, many_descriptors, name):
    with hostile.survives():
        observation, stats, peaks = beside_validator(hostile, name)
    server_errors = sum(1 for r in observation.replies if r.status == 500) + stats.server_errors
    failures = SMALL_LINE.failures(stats.model_share, stats.latency_p99_ms, server_errors, peaks.peak_growth_mb)
    seen = observation.statuses()
    assert not observation.problems, f"{HEAVY_25[name]}: {observation.problems}; seen {seen}"
    assert not failures, (f"{HEAVY_25[name]}: {failures}; validator {stats.model_answered}/{stats.sent} model "
                          f"answers, statuses {stats.statuses}; attack saw {seen}")
