"""The soak's memory rule reads a leak, not a reload: the RSS samples of a one-minute soak in the suite that failed
with the median rule (a reload and a worker restart in the last quarter), and a steady leak that must still fail."""

from __future__ import annotations

from sn72_lab.soak_report import Sample, Soak, verdict

# RSS (MB) every 5 s from the run that read "+437.0 MB from the second quarter to the last": reloads at 20 s and
# 40 s (two models held while the new one loads), the worker killed at 32 s and loading its model again at 45-50 s.
RELOADS_AND_A_RESTART = [1805.2, 1805.8, 1806.3, 1806.4, 2312.8, 2561.9, 1347.5, 1683.5, 2243.4, 2481.2, 1705.5]


def soak_of(rss: list[float]) -> Soak:
    soak = Soak(plan={"sample_s": 5.0}, disk="test", answers={"failed": 0}, final={"reloads_ok": 0},
                alive_at_end=True)
    soak.samples = [Sample(t_s=5.0 * (i + 1), rss_mb=mb, fds=33, sent=7, model=7, prior=0, failed=0, p50_ms=17.0,
                           p99_ms=20.0) for i, mb in enumerate(rss)]
    return soak


def test_transient_peaks_of_reloads_and_a_worker_restart_are_not_read_as_growth():
    checks = verdict(soak_of(RELOADS_AND_A_RESTART))["checks"]
    assert checks["rss"][0] is True, checks["rss"]


def test_a_steady_leak_fails_the_rss_rule_even_between_transient_peaks():
    # 30 MB a sample on a floor of 1,800 MB, with a reload's +500 MB peak every fourth sample.
    leaking = [1800.0 + 30 * i + (500 if i % 4 == 3 else 0) for i in range(16)]
    checks = verdict(soak_of(leaking))["checks"]
    assert checks["rss"][0] is False, checks["rss"]
    assert "+240.0 MB" in checks["rss"][1], checks["rss"]
