#!/usr/bin/env python
"""Request lifetimes at full size through a real miner process: bursts and drains, JSON out.

    lifetime_bench.py burst --requests 1000 --timeout-s 9 --json burst-1000.json
    lifetime_bench.py drain --requests 300 --json drain-300.json

`burst` sends every request at once from several validator wallets (real dendrites, no client-side
connection pool limit) with the validators' timeout, then compares what the client saw as late (the
dendrite's timeout fired) with the miner's own late count. The client shares the machine with the
miner: the miner runs niced (`--miner-nice`) so that the client's own timers stay punctual.
`drain` sends every request at once, sends SIGTERM while they are in flight, and counts the answers
(none may be refused or disconnected). Both use the tiny two-level
CPU cascade of tests/e2e/test_lifetime_axon.py (level 1 never confident, a slow detector as level 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from sn72_lab.loadtest import burst, drain, miner_late
from sn72_lab.offline import ensure_wallet, run_miner, write_offline_metagraph
from sn72_tools.client import encode_jpeg, synthetic_image


def cascade(models: Path, detector_batch: int) -> dict[str, Any]:
    from sn72_lab.tiny_models import build_tiny_vit, build_tiny_yolo

    vit, yolo = build_tiny_vit(models / "tiny-vit"), build_tiny_yolo(models / "tiny-yolo")
    return {
        "version": "lifetime-bench",
        "levels": [
            {"name": "fast", "exit_margin": 0.5, "experts": [
                {"name": "vit", "backend": "hf_classifier", "model": str(vit), "device": "cpu", "max_batch": 32,
                 "max_wait_ms": 2.0, "options": {"positive_labels": ["Roadwork"]}}]},
            {"name": "slow", "exit_margin": 0.5, "experts": [
                {"name": "yolo", "backend": "detector", "model": str(yolo), "device": "cpu", "input_size": 320,
                 "max_batch": detector_batch, "max_wait_ms": 2.0, "options": {"classes": ["cone"]}}]},
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["burst", "drain"])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--timeout-s", type=float, default=9.0, help="the client's timeout (validators: 9)")
    parser.add_argument("--wallets", type=int, default=8, help="validator wallets the requests come from")
    parser.add_argument("--image-size", default="640x480", help="WxH of the generated JPEGs")
    parser.add_argument("--miner-nice", type=int, default=10,
                        help="niceness of the miner process: the client on the same machine gets the CPU first and "
                             "times its requests as a validator on its own machine would (0: share equally)")
    parser.add_argument("--legacy", action="store_true",
                        help="a miner without the HTTP-layer settings (measuring an older checkout)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="sn72-lifetime-"))
    wallets = folder / "wallets"
    miner = ensure_wallet(wallets, "miner")
    callers = [ensure_wallet(wallets, f"validator{i}") for i in range(args.wallets)]
    write_offline_metagraph(folder / "metagraph.json", 72, miner.hotkey.ss58_address,
                            {w.hotkey.ss58_address: 1000.0 for w in callers})
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    print(f"generating {args.requests} JPEGs of {width}x{height}", file=sys.stderr)
    payloads = [encode_jpeg(synthetic_image(i, (width, height))) for i in range(args.requests)]
    extra: dict[str, Any] = {"guards": {"rate_per_s": 0.0}, "scheduler": {"cache_size": 0},
                             "log_level": "WARNING", "drain_timeout_s": 60.0}
    if not args.legacy:
        # one address for every simulated validator: no per-address share of the request slots
        extra["axon"] = {"max_connections_per_ip": args.requests + 64, "max_concurrent_requests_per_ip": 100_000}
    detector_batch = 1 if args.mode == "drain" else 8
    if args.mode == "drain":
        extra["log_level"] = "INFO"  # the drain's own account of what it finished
    with run_miner(folder, wallets, miner, cascade(folder / "models", detector_batch), extra=extra,
                   nice=args.miner_nice) as process:
        if args.mode == "burst":
            report = burst(process.port, process.metrics_port, process.hotkey, callers, payloads, args.timeout_s)
            out: dict[str, Any] = {"mode": "burst", **report.as_dict(), "miner_late": miner_late(report)}
        else:
            drained, code = drain(process, callers, payloads, timeout_s=max(args.timeout_s, 60.0))
            lines = [line for line in process.lines if "drain" in line or "stopped" in line]
            out = {"mode": "drain", **drained.as_dict(), "exit_code": code, "log": lines}
    for key, value in out.items():
        print(f"{key:<18} {value}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
