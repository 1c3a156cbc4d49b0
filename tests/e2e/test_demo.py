"""sn72-demo end to end with both of the miner's ports moved: the demo reads the metrics from the
port the miner was given, not from a fixed one. Uses the tiny models under .demo/models (built if missing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sn72_lab.offline import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_takes_both_ports_and_reads_metrics_where_the_miner_serves_them(tmp_path: Path) -> None:
    # The shipped demo config, with its state (wallets, metagraph, store, log) moved into tmp_path.
    config = yaml.safe_load((ROOT / "config" / "miner.demo.yaml").read_text())
    config["wallet"]["path"] = "wallets"
    config["chain"]["metagraph_file"] = "metagraph.json"
    config["active_learning"]["directory"] = "al-store"
    config["logs"]["file"] = "miner.log"
    config["cascade_file"] = str(ROOT / "config" / "cascade.demo.yaml")
    (tmp_path / "miner.yaml").write_text(yaml.safe_dump(config))
    port, metrics_port = free_port(), free_port()
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MINER_")}
    done = subprocess.run(
        [sys.executable, "-m", "sn72_lab.demo", "--config", "miner.yaml", "--port", str(port), "--metrics-port",
         str(metrics_port), "--requests", "2", "--concurrency", "2"],
        cwd=tmp_path, env={**environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"a few metrics from http://127.0.0.1:{metrics_port}/metrics" in done.stdout
    assert "  sn72_miner_requests_total{" in done.stdout  # read from the moved port
    assert f"MINER READY 127.0.0.1:{port}" in done.stdout
    assert (tmp_path / "metagraph.json").exists() and (tmp_path / "wallets" / "demo-validator").is_dir()
