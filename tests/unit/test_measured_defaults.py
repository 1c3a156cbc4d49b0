"""Defaults chosen by measurement follow the run recorded beside them (docs/performance.md names it)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from cascade.config import ExpertConfig

RUN = Path(__file__).resolve().parents[2] / "docs" / "bench" / "h200" / "2026-12-04" / "batch-window"


def _figures(setting: str, clients: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(RUN.glob(f"{setting}-{clients}-r*.json"))]


def test_wait_when_idle_defaults_to_what_the_h200_run_chose():
    window_c512, idle_c512 = _figures("window", "c512"), _figures("idle-dispatch", "c512")
    window_c1, idle_c1 = _figures("window", "c1"), _figures("idle-dispatch", "c1")
    assert len(window_c512) == len(idle_c512) == len(window_c1) == len(idle_c1) == 3
    throughput_window = [r["throughput_rps"] for r in window_c512]
    throughput_idle = [r["throughput_rps"] for r in idle_c512]
    # Under load the two are the same within the spread of the runs (ranges overlap, medians within 3%) ...
    assert min(throughput_idle) <= max(throughput_window) and min(throughput_window) <= max(throughput_idle)
    assert abs(statistics.median(throughput_idle) / statistics.median(throughput_window) - 1) < 0.03
    assert all(r["late_answers"] == 0 for r in window_c512 + idle_c512)
    # ... and alone, starting at once answers sooner in every round.
    assert max(r["latency_ms"]["p50"] for r in idle_c1) < min(r["latency_ms"]["p50"] for r in window_c1)
    default = ExpertConfig(name="x", backend="hf_classifier", model="x").wait_when_idle
    assert default is False


def test_production_level_one_serves_without_the_idle_window():
    production = Path(__file__).resolve().parents[2] / "config" / "cascade.production.yaml"
    level_one = yaml.safe_load(production.read_text())["levels"][0]["experts"]
    assert all(ExpertConfig(**expert).wait_when_idle is False for expert in level_one)
