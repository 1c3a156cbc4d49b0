"""A running miner's /metrics, read as the dashboard reads it (Prometheus text format, on its metrics port)."""

from __future__ import annotations

import urllib.request
from typing import Any


def families(metrics_port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """Every metric family of one scrape by name (counters without their `_total`, as the parser names them)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=5).read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def axon_outcomes(metrics_port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """The axon's outcome counters (`sn72_miner_axon_total`: refused_*, answered_*, closed_*, late_*) by outcome;
    the only place that knows the metric's name and label."""
    family = families(metrics_port, host).get("sn72_miner_axon")
    if family is None:
        return {}
    return {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")}


def miner_status(metrics_port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """The miner's `/status` JSON (pid, phase, serving version, last reload, fronts)."""
    import json

    with urllib.request.urlopen(f"http://{host}:{metrics_port}/status", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]
