"""The operator's deploy files agree with each other and with the docs.

The Prometheus config must check where the repository keeps it and where docker-compose mounts it; the alert
table of docs/operations.md must list every rule of alerts.yml; every exit code the miner uses must be in each
place an operator reads exit codes from.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from cascade.exit_codes import EXIT_DEVICE
from neurons.reload import RESTART_EXIT_CODE
from neurons.startup import EXIT_CONFIG, EXIT_CRASH

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
MINER_EXIT_CODES = (0, EXIT_CRASH, EXIT_CONFIG, EXIT_DEVICE, RESTART_EXIT_CODE)


def alert_names() -> set[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def test_the_operations_alert_table_lists_every_alert_rule():
    doc = (ROOT / "docs" / "operations.md").read_text()
    table = set(re.findall(r"^\| `(SN72\w+)` \|", doc, flags=re.MULTILINE))
    rules = alert_names()
    assert len(rules) >= 7
    assert table == rules, f"missing from the table: {rules - table}; not rules: {table - rules}"


def container_mounts() -> tuple[PurePosixPath, dict[PurePosixPath, Path]]:
    """(the config path Prometheus is started with, {path in the container: file in the repository})."""
    service = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]["prometheus"]
    config_flag = next(arg for arg in service["command"] if arg.startswith("--config.file="))
    mounts = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[PurePosixPath(target)] = (ROOT / "deploy" / source).resolve()
    return PurePosixPath(config_flag.split("=", 1)[1]), mounts


def test_the_rule_files_resolve_in_the_repository_and_in_the_container():
    # Prometheus and promtool read a relative rule path against the config file's folder (an absolute one as is).
    config_in_container, mounts = container_mounts()
    assert mounts[config_in_container] == PROMETHEUS / "prometheus.yml"
    rule_files = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["rule_files"]
    assert rule_files
    for rule_file in rule_files:
        here = PROMETHEUS / rule_file
        assert here.is_file(), f"{rule_file} does not resolve beside deploy/prometheus/prometheus.yml"
        there = config_in_container.parent / rule_file
        assert mounts.get(there) == here.resolve(), f"{rule_file} is {there} in the container, which mounts {mounts}"


def promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


@pytest.mark.skipif(promtool() is None, reason="promtool is not installed (Debian package `prometheus`, or PROMTOOL=)")
def test_promtool_checks_the_config_in_both_layouts(tmp_path):
    tool = promtool()
    assert tool is not None
    _, mounts = container_mounts()
    container = tmp_path / "container"  # the container's files, at their paths under a stand-in root
    for target, source in mounts.items():
        copy = container / target.relative_to("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    config_in_container, _ = container_mounts()
    for config in (PROMETHEUS / "prometheus.yml", container / config_in_container.relative_to("/")):
        done = subprocess.run([tool, "check", "config", str(config)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{len(alert_names())} rules found" in done.stdout


@pytest.mark.skipif(promtool() is None, reason="promtool is not installed (Debian package `prometheus`, or PROMTOOL=)")
def test_the_late_answer_alert_fires_for_the_engines_lateness_and_the_callers_only():
    """deploy/prometheus/alerts_test.yml: answers to requests that reached the engine already late do not fire it
    (they fired it as the engine's total less a second counter: increase() extrapolates two series differently), an
    answer the engine made late does, and so does one the HTTP layer saw reach its caller late."""
    tool = promtool()
    assert tool is not None
    done = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_miner_exit_code_is_in_the_help_the_operations_table_pm2_and_the_readme():
    help_text = subprocess.run([sys.executable, "-m", "neurons.miner", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60).stdout
    epilog = " ".join(help_text[help_text.index("Exit codes"):].split())
    operations = (ROOT / "docs" / "operations.md").read_text()
    table = operations[operations.index("## Exit codes and pm2"):]
    table = table[: table.index("\n## ", 3)]
    pm2 = "\n".join(line for line in (ROOT / "pm2.config.js").read_text().splitlines() if line.strip().startswith("//"))
    readme = (ROOT / "README.md").read_text()
    readme_item = readme[readme.index("**Exit codes and pm2**"):][:900]
    for code in MINER_EXIT_CODES:
        assert re.search(rf"\b{code} ", epilog), f"exit {code} missing from sn72-miner --help"
        assert re.search(rf"\| {code}\b", table), f"exit {code} missing from the docs/operations.md table"
        assert re.search(rf"\b{code}\b", readme_item), f"exit {code} missing from the README's exit codes"
        if code not in (0, EXIT_CONFIG):  # pm2's comment lists what it restarts besides its one stop code
            assert re.search(rf"\b{code}\b", pm2), f"exit {code} missing from pm2.config.js's comment"
    assert re.search(rf"stop_exit_codes: \[{EXIT_CONFIG}\]", (ROOT / "pm2.config.js").read_text())
