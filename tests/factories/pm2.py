"""A real pm2 (npm's pm2@7, installed into a temporary folder) with its own PM2_HOME, and an offline miner for it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sn72_lab.offline import ROOT, Wallets, free_port
from tests.factories.cascades import vit_cascade

PM2_SPEC = "pm2@7"


def install_pm2(folder: Path) -> Path:
    """`npm install pm2@7` into `folder`; the test is skipped, with the reason, where that cannot be done."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to install pm2 from npm (not found on PATH)")
    try:
        done = subprocess.run(["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund", PM2_SPEC],
                              capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip(f"`npm install {PM2_SPEC}` took more than 180 s (no registry reachable?)")
    binary = folder / "node_modules" / ".bin" / "pm2"
    if done.returncode != 0 or not binary.exists():
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        pytest.skip(f"`npm install {PM2_SPEC}` failed (no registry reachable?): {tail}")
    return binary


@dataclass
class Pm2:
    """pm2's CLI against a daemon of its own: PM2_HOME and HOME in a temporary folder, never the user's pm2."""

    binary: Path
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PM2_HOME": str(self.home), "HOME": str(self.home.parent), **extra}

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.binary), *args], cwd=ROOT, env=self.env(**env), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"pm2 {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def app(self, name: str) -> dict[str, Any] | None:
        """pid, status, exit_code, restart_time and log path of the app as `pm2 jlist` has it (None: no such app)."""
        for proc in json.loads(self("jlist").stdout):
            if proc["name"] == name:
                env = proc["pm2_env"]
                return {"pid": proc["pid"], "status": env["status"], "exit_code": env.get("exit_code"),
                        "restarts": env["restart_time"], "log": env.get("pm_err_log_path")}
        return None

    def kill(self) -> None:
        subprocess.run([str(self.binary), "kill"], env=self.env(), capture_output=True, timeout=60)


def readyz(metrics_port: int) -> int | None:
    """The miner's /readyz status code (None: nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_until(predicate: Any, timeout_s: float, what: str, step_s: float = 0.25) -> Any:
    """Poll `predicate` (a process outside this one: no event to wait on) until it returns something true."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


def offline_miner_config(folder: Path, wallets: Wallets, model: Path) -> tuple[Path, int]:
    """miner.yaml (offline, loopback, a one-expert CPU cascade) and its metrics port."""
    cascade = vit_cascade(model, "pm2", max_batch=8, max_wait_ms=2.0)
    (folder / "cascade.yaml").write_text(yaml.safe_dump(cascade))
    metrics_port = free_port()
    config = {
        "wallet": {"name": wallets.miner.name, "hotkey": "default", "path": str(wallets.path)},
        "chain": {"offline": True, "metagraph_file": str(folder / "metagraph.json")},
        "axon": {"host": "127.0.0.1", "port": free_port(), "external_ip": "127.0.0.1"},
        "metrics": {"port": metrics_port},
        "cascade_file": "cascade.yaml",
        "drain_timeout_s": 5.0,
        "log_level": "INFO",
    }
    (folder / "miner.yaml").write_text(yaml.safe_dump(config))
    return folder / "miner.yaml", metrics_port
