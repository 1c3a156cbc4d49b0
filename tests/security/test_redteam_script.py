"""`sn72-redteam`: no side effects for --help, one-line errors, a real run against the miner
that reports each attack's line (the honest validator's model answers in time, p50/p99, 500s, RSS and fd peaks),
and a line that can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.security

ROOT = Path(__file__).resolve().parents[2]


def redteam(*args: str, home: Path, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sn72_lab.hostile.redteam", *args], cwd=home, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def test_help_has_no_side_effects(tmp_path):
    completed = redteam("--help", home=tmp_path)
    assert completed.returncode == 0 and "sn72-redteam" in completed.stdout
    assert list(tmp_path.iterdir()) == []  # not even ~/.bittensor


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["--miner", "nonsense", "--miner-hotkey", "x", "--validator", "v", "--attacker", "a"],
    ["--miner", "127.0.0.1:1"],
    ["--only", "no-such-attack", "--miner", "127.0.0.1:1", "--miner-hotkey", "x", "--validator", "v",
     "--attacker", "a"],
])
def test_bad_input_gets_one_line(tmp_path, args):
    completed = redteam(*args, home=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: ") and len(completed.stderr.strip().splitlines()) == 1
    assert "Traceback" not in completed.stderr


@pytest.mark.slow
def test_a_run_against_the_miner_reports_each_attack(hostile, tmp_path):
    report = tmp_path / "report.json"
    completed = redteam(
        "--miner", f"127.0.0.1:{hostile.target.port}", "--miner-hotkey", hostile.target.miner_hotkey,
        "--wallet.path", str(hostile.process.wallets), "--validator", "validator", "--attacker", "attacker",
        "--non-validator", "peer", "--pid", str(hostile.pid), "--only", "unsigned,wrong-route,bad-base64",
        "--window-s", "1.5", "--json", str(report), home=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = {row["attack"]: row for row in json.loads(report.read_text())["attacks"]}
    assert list(rows) == ["unsigned", "wrong-route", "bad-base64"]
    assert [rows[name]["seen"] for name in rows] == ["401", "404", "400"]
    for row in rows.values():
        assert row["passed"] and row["alive"] and isinstance(row["rss_growth_mb"], float)
        assert row["validator_sent"] >= 1 and row["validator_answered"] == row["validator_sent"]
        assert row["model_share"] == 1.0 and row["line_passed"] and row["line_failures"] == []
        assert 0 < row["honest_p50_ms"] <= row["honest_p99_ms"] < 1000 and row["server_errors"] == 0
        assert isinstance(row["rss_peak_growth_mb"], float) and row["rss_peak_growth_mb"] >= 0
        assert row["fd_peak"] > 10  # the miner's open descriptors (sockets, log, model files)
    assert "unsigned" in completed.stdout and "model in time" in completed.stdout  # the table


@pytest.mark.slow
def test_an_attack_that_misses_the_line_fails_the_run(hostile, tmp_path):
    """A line no miner meets (honest p99 under 1 ms): the attack's statuses are right, the run still fails."""
    report = tmp_path / "report.json"
    completed = redteam(
        "--miner", f"127.0.0.1:{hostile.target.port}", "--miner-hotkey", hostile.target.miner_hotkey,
        "--wallet.path", str(hostile.process.wallets), "--validator", "validator", "--attacker", "attacker",
        "--pid", str(hostile.pid), "--only", "wrong-route", "--window-s", "1.5", "--line-p99-ms", "1",
        "--json", str(report), home=tmp_path)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    data = json.loads(report.read_text())
    (row,) = data["attacks"]
    assert data["line"]["max_p99_ms"] == 1 and row["problems"] == [] and not row["passed"]
    assert any("p99" in failure for failure in row["line_failures"])


def test_the_line_names_each_miss():
    from sn72_lab.hostile.measure import PassLine

    line = PassLine()
    assert line.failures(1.0, 999.0, 0, 299.0) == []
    missed = line.failures(0.98, 1001.0, 1, 301.0)
    assert [m.split()[0] for m in missed] == ["model", "honest", "1", "peak"]
    assert line.failures(None, None, 0, None) == ["no honest request in the window"]


@pytest.mark.slow
def test_compare_puts_two_reports_side_by_side(tmp_path):
    def report(seen: str, passed: bool, share: float) -> dict:
        row = {"attack": "grey16-pngs-parallel", "seen": seen, "problems": [], "alive": True, "passed": passed,
               "model_share": share, "validator_sent": 9, "honest_p50_ms": 20.0, "honest_p99_ms": 8400.0,
               "server_errors": 0, "rss_peak_growth_mb": 1108.0, "fd_peak": 32}
        return {"attacks": [row]}

    before, after, table = tmp_path / "before.json", tmp_path / "after.json", tmp_path / "table.md"
    before.write_text(json.dumps(report("200x3", False, 0.0)))
    after.write_text(json.dumps(report("200x3", True, 1.0)))
    completed = redteam("--compare", str(before), str(after), "--markdown", str(table), home=tmp_path)
    assert completed.returncode == 0, completed.stderr
    header, _, row = table.read_text().splitlines()
    assert header.count("pass") == 2
    assert row.startswith("| grey16-pngs-parallel | 200x3 | 0% (9) |") and "| 100% (9) |" in row
    assert row.count("**no**") == 1 and row.endswith("| yes |")
