#!/usr/bin/env python
"""The whole job end to end, offline: tiny models, the miner on loopback, a validator querying it.

    sn72-demo                                  # build what is missing under .demo/, run, stop
    sn72-demo --requests 100                   # more traffic
    sn72-demo --port 18091 --metrics-port 19108   # both of the miner's ports elsewhere (others in use)
    sn72-demo --config my-offline-miner.yaml   # another offline miner config (wallet, metagraph file, ports)

Steps: build the tiny models (once), create throwaway miner and validator wallets, write a local
metagraph in which the validator holds a permit, start `python -m neurons.miner` in offline mode,
send signed `ImageSynapse` requests through a real dendrite (sn72-query), print the answers,
a few Prometheus metrics, then stop the miner with SIGTERM (it drains before exiting). The wallets, the
metagraph file and both ports are the config's (config/miner.demo.yaml unless --config), so the miner, the
queries and the metrics read all look in the same places. Exit code: sn72-query's (0 every request answered),
2 a config the demo cannot run with.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from neurons.miner import READY_LINE
from neurons.tool_config import ToolError, load_miner_config
from sn72_lab.offline import ROOT, ensure_wallet, write_offline_metagraph

DEMO = ROOT / ".demo"
DEMO_CONFIG = ROOT / "config/miner.demo.yaml"
SHOWN_METRICS = ("sn72_miner_requests_total", "sn72_miner_levels_run_total", "sn72_miner_request_latency_seconds_count",
                 "sn72_miner_axon_total")


def demo_model_names(cascade_file: Path) -> list[str]:
    """The tiny models (folders under .demo/models) that the cascade names; other models are the config's own."""
    from cascade.config import load_cascade

    models = DEMO / "models"
    cascade = load_cascade(cascade_file)
    return sorted({Path(e.model).relative_to(models).parts[0] for e in cascade.experts()
                   if Path(e.model).is_relative_to(models)})


def loopback(host: str) -> str:
    """Where this machine reaches a listener bound to `host` (a wildcard bind answers on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def demo_config(path: Path) -> Any:
    """The miner config the demo runs (MinerConfig); ToolError when the demo cannot run it."""
    config = load_miner_config(path)
    if not config.chain.offline or config.chain.metagraph_file is None:
        raise ToolError(f"--config {path}: the demo runs offline: it needs chain.offline: true and "
                        "chain.metagraph_file (the demo writes that file)")
    return config


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


def print_metrics(url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:  # the demo's report, not its outcome
        print(f"  cannot read {url}: {exc}")
        return
    for line in text.splitlines():
        if line.startswith(SHOWN_METRICS) and not line.endswith(" 0.0"):  # series at zero from the start: skipped
            print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG,
                        help="an offline miner config (default: config/miner.demo.yaml)")
    parser.add_argument("--port", type=int, help="the miner's axon port (default: axon.port of --config)")
    parser.add_argument("--metrics-port", type=int, help="the miner's metrics port (default: metrics.port of --config)")
    args = parser.parse_args(argv)
    try:
        config = demo_config(args.config)
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else config.axon.port
    metrics_port = args.metrics_port if args.metrics_port is not None else config.metrics.port
    python = sys.executable

    print("1. tiny models")
    missing = [name for name in demo_model_names(config.cascade_file) if not (DEMO / "models" / name).exists()]
    if missing:
        subprocess.run([python, "-m", "sn72_lab.make_tiny_models", "--out", str(DEMO / "models"), *missing],
                       check=True)
    print("2. wallets and offline metagraph")
    wallets = Path(config.wallet.path)
    miner = ensure_wallet(wallets, config.wallet.name, config.wallet.hotkey)
    validator = ensure_wallet(wallets, "demo-validator")
    write_offline_metagraph(config.chain.metagraph_file, config.chain.netuid, miner.hotkey.ss58_address,
                            {validator.hotkey.ss58_address: 10_000.0})
    print("3. miner (offline mode)")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1"}
    process = subprocess.Popen(
        [python, "-m", "neurons.miner", "--config", str(args.config.resolve()), "--axon.port", str(port),
         "--metrics.port", str(metrics_port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_ready(process, 300)
        print("4. validator-style queries through a real dendrite")
        code = subprocess.run(
            [python, "-m", "sn72_tools.query", "--wallet.name", "demo-validator",
             "--wallet.path", str(wallets), "--miner", f"{loopback(config.axon.host)}:{port}",
             "--miner-hotkey", miner.hotkey.ss58_address, "--synthetic", str(args.requests),
             "--concurrency", str(args.concurrency), "-v"],
            cwd=ROOT, env=env,
        ).returncode
        if metrics_port:
            url = f"http://{loopback(config.metrics.host)}:{metrics_port}/metrics"
            print(f"5. a few metrics from {url}")
            print_metrics(url)
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
