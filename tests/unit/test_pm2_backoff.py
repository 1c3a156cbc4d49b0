"""scripts/pm2_backoff.py: pm2's restart back-off, kept outside pm2 (see its docstring for why)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pm2_backoff.py"
_spec = importlib.util.spec_from_file_location("pm2_backoff", SCRIPT)
assert _spec is not None and _spec.loader is not None
backoff = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(backoff)


def test_the_delays_follow_pm2s_exponential_back_off():
    assert backoff.next_delay_s(0.0, None) == 0.0  # pm2's first start
    delays, delay = [], 0.0
    for _ in range(10):  # each run shorter than 30 s
        delay = backoff.next_delay_s(delay, 5.0)
        delays.append(delay)
    assert delays[:4] == [1.0, 1.5, 2.25, 3.375] and delays[-1] == 15.0
    assert backoff.next_delay_s(15.0, 30.0) == 1.0  # a run of 30 s or more starts over


@pytest.fixture
def under_pm2(tmp_path, monkeypatch):
    for key, value in {"PM2_HOME": str(tmp_path), "pm_id": "3", "name": "sn72-miner"}.items():
        monkeypatch.setenv(key, value)
    slept: list[float] = []
    monkeypatch.setattr(backoff.time, "sleep", slept.append)
    return tmp_path / "sn72-miner-3.backoff.json", slept


def test_pm2s_first_start_waits_nothing_and_records_it(under_pm2, monkeypatch):
    state, slept = under_pm2
    monkeypatch.setenv("restart_time", "0")
    backoff.wait_for_turn()
    assert slept == [] and json.loads(state.read_text())["delay_s"] == 0.0


def test_a_quick_failure_waits_longer_each_time_and_says_so(under_pm2, monkeypatch, capsys):
    state, slept = under_pm2
    monkeypatch.setenv("restart_time", "4")
    monkeypatch.setenv("exit_code", "0")
    state.write_text(json.dumps({"started": time.time() - 3.0, "delay_s": 2.25}))
    backoff.wait_for_turn()
    assert slept == [3.375] and json.loads(state.read_text())["delay_s"] == 3.375
    line = capsys.readouterr().err.strip()
    assert "| WARNING  | pm2_backoff - pm2 restart 4: the last run lasted 3.0 s (exit code 0" in line
    assert line.endswith("starting again in 3.38 s")


def test_without_a_record_a_restart_waits_the_first_delay(under_pm2, monkeypatch):
    _, slept = under_pm2
    monkeypatch.setenv("restart_time", "1")
    backoff.wait_for_turn()
    assert slept == [1.0]


def test_outside_pm2_nothing_waits_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("pm_id", raising=False)
    monkeypatch.setenv("PM2_HOME", str(tmp_path))
    monkeypatch.setattr(backoff.time, "sleep", lambda s: pytest.fail("slept"))
    backoff.wait_for_turn()
    assert list(tmp_path.iterdir()) == []
