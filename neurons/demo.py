#!/usr/bin/env python
"""The whole job end to end, offline: tiny models, the miner on loopback, a validator querying it.

    sn72-demo                 # build what is missing under .demo/, run, stop
    sn72-demo --requests 100  # more traffic

Steps: build the tiny models (once), create throwaway miner and validator wallets, write a local
metagraph in which the validator holds a permit, start `python -m neurons.miner` in offline mode,
send signed `ImageSynapse` requests through a real dendrite (sn72-query), print the answers,
a few Prometheus metrics, then stop the miner with SIGTERM (it drains before exiting).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from neurons.miner import READY_LINE
from neurons.offline import ROOT, ensure_wallet, write_offline_metagraph

DEMO = ROOT / ".demo"


def demo_model_names() -> list[str]:
    """The tiny models the demo cascade names (folders under .demo/models), read from its config."""
    from cascade.config import load_cascade

    models = DEMO / "models"
    cascade = load_cascade(ROOT / "config/cascade.demo.yaml")
    return sorted({Path(e.model).relative_to(models).parts[0] for e in cascade.experts()})


def wait_ready(process: subprocess.Popen[str], timeout_s: float) -> None:
    until = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < until:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                raise SystemExit(f"miner exited early with code {process.returncode}")
            continue
        print(f"  miner | {line.rstrip()}")
        if line.startswith(READY_LINE):
            return
    raise SystemExit("miner did not become ready in time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args(argv)
    python = sys.executable

    print("1. tiny models")
    missing = [name for name in demo_model_names() if not (DEMO / "models" / name).exists()]
    if missing:
        subprocess.run([python, "-m", "cascade.tools.make_tiny_models", "--out", str(DEMO / "models"), *missing],
                       check=True)
    print("2. wallets and offline metagraph")
    miner = ensure_wallet(DEMO / "wallets", "demo-miner")
    validator = ensure_wallet(DEMO / "wallets", "demo-validator")
    write_offline_metagraph(DEMO / "metagraph.json", 72, miner.hotkey.ss58_address,
                            {validator.hotkey.ss58_address: 10_000.0})
    print("3. miner (offline mode)")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1"}
    process = subprocess.Popen(
        [python, "-m", "neurons.miner", "--config", str(ROOT / "config/miner.demo.yaml"),
         "--axon.port", str(args.port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_ready(process, 300)
        print("4. validator-style queries through a real dendrite")
        code = subprocess.run(
            [python, "-m", "neurons.query", "--wallet.name", "demo-validator",
             "--wallet.path", str(DEMO / "wallets"), "--miner", f"127.0.0.1:{args.port}",
             "--miner-hotkey", miner.hotkey.ss58_address, "--synthetic", str(args.requests),
             "--concurrency", str(args.concurrency), "-v"],
            cwd=ROOT, env=env,
        ).returncode
        print("5. a few metrics from http://127.0.0.1:9108/metrics")
        with urllib.request.urlopen("http://127.0.0.1:9108/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.endswith(" 0.0"):
                    continue  # series that exist at zero from the start
                if line.startswith(("sn72_miner_requests_total", "sn72_miner_levels_run_total",
                                    "sn72_miner_request_latency_seconds_count", "sn72_miner_axon_total")):
                    print(f"  {line}")
    finally:
        print("6. stopping the miner (SIGTERM, drain)")
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=60)
            for line in out.splitlines()[-5:]:
                print(f"  miner | {line}")
        except subprocess.TimeoutExpired:
            process.kill()
    return code


if __name__ == "__main__":
    sys.exit(main())
