"""scripts/redteam.py (`sn72-redteam`): no side effects for --help, one-line errors, a real run against the miner."""

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
    return subprocess.run([sys.executable, str(ROOT / "scripts/redteam.py"), *args], cwd=home, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def test_help_has_no_side_effects(tmp_path):
    completed = redteam("--help", home=tmp_path)
    assert completed.returncode == 0 and "sn72-redteam" in completed.stdout
    assert list(tmp_path.iterdir()) == []  # not even ~/.bittensor


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
    assert "unsigned" in completed.stdout and "validator" in completed.stdout  # the table
