"""scripts/prod_bench.sh, the one command the GPU run is: help without side effects, clear refusals of bad
arguments, and a failing step reported while the next ones still run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prod_bench.sh"

pytestmark = pytest.mark.bench


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)


def test_help_and_dry_run_touch_nothing(tmp_path):
    done = run("--help", cwd=tmp_path)
    assert done.returncode == 0 and "bash scripts/prod_bench.sh OUT [--size full|tiny]" in done.stdout
    done = run(str(tmp_path / "out"), "--dry-run", cwd=tmp_path)
    assert done.returncode == 0
    steps = [line.split(" ", 1)[0] for line in done.stdout.splitlines()]
    assert steps == ["env", "models", "levels", "traffic", "report"]
    assert "--device cuda:0 --production full" in done.stdout and "cascade.bench-production.yaml" in done.stdout
    assert "cascade.bench-production-tiny.yaml" in run("o", "--size", "tiny", "--dry-run", cwd=tmp_path).stdout
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_one_line_errors(tmp_path):
    for args, message in ((["--size", "huge", "o"], "--size must be full or tiny"), ([], "give the OUT folder"),
                          (["a", "b"], "one OUT folder only"), (["--fast", "o"], "unknown option --fast")):
        done = run(*args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.splitlines()) == 1, args
    assert list(tmp_path.iterdir()) == []


def test_a_failing_step_is_reported_and_the_next_ones_run(tmp_path):
    done = run(str(tmp_path / "out"), "--size", "tiny", cwd=tmp_path, PYTHON="false")
    assert done.returncode == 1
    for name in ("env", "models", "levels", "traffic", "report"):
        assert f"FAILED {name} (exit 1)" in done.stdout and "going on" in done.stdout
    assert "failed: env models levels traffic report" in done.stdout
    steps = json.loads((tmp_path / "out" / "steps.json").read_text())
    assert {name: step["exit"] for name, step in steps.items() if isinstance(step, dict)} == {
        "env": 1, "models": 1, "levels": 1, "traffic": 1, "report": 1}
    # every progress line is timestamped
    assert all(line.startswith("[") for line in done.stdout.splitlines() if "step " in line or "FAILED" in line)


def test_the_budget_skips_what_no_longer_fits(tmp_path):
    done = run(str(tmp_path / "out"), "--size", "tiny", cwd=tmp_path, PYTHON="false", PROD_BENCH_BUDGET_S="0")
    assert done.returncode == 1 and "SKIPPED levels: the 0s budget is spent" in done.stdout
    assert "step 5/5 report" in done.stdout  # the tables are always attempted
