"""One request through the miner of a checkout, traced: which runtime files it enters and where it changes threads.

    SN72_TRACE_ROOT=TREE SN72_TRACE_OUT=OUT/ev PYTHONPATH=scripts/request_trace:TREE \
        .venv/bin/python scripts/request_trace/trace_one_request.py OUT [--old-layout]
    python3 scripts/request_trace/trace_one_request.py --analyse OUT

The miner (`python -m neurons.miner`, offline, a tiny ViT on the CPU in a thread, result cache off) answers three
warm-up requests through a real dendrite, then one 640x480 JPEG whose send and receive times bound the window; the
miner's calls into neurons/ and cascade/ inside that window are read from its trace. `--old-layout` imports the
harness pieces from where they lived before the tools left the runtime packages (neurons.offline, neurons.client,
cascade.tiny_models).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

BACKGROUND = ("metagraph", "metrics-http", "MainThread", "QueueFeeder", "log-", "Thread-2 (_monitor)")


def drive(out: Path, old_layout: bool) -> None:
    if old_layout:
        from cascade.tiny_models import build_tiny_vit  # type: ignore[import-not-found]
        from neurons.client import axon_info, encode_jpeg, make_dendrite, query, synthetic_image  # type: ignore
        from neurons.offline import ensure_wallet, run_miner, write_offline_metagraph  # type: ignore
    else:
        from sn72_lab.offline import ensure_wallet, run_miner, write_offline_metagraph
        from sn72_lab.tiny_models import build_tiny_vit
        from sn72_tools.client import axon_info, encode_jpeg, make_dendrite, query, synthetic_image

    run = out / "run"
    run.mkdir(parents=True, exist_ok=True)
    miner = ensure_wallet(run / "wallets", "miner")
    validator = ensure_wallet(run / "wallets", "validator")
    write_offline_metagraph(run / "metagraph.json", 72, miner.hotkey.ss58_address,
                            {validator.hotkey.ss58_address: 1000.0})
    model = build_tiny_vit(run / "models" / "tiny-vit")
    cascade = {"version": "trace", "levels": [{"name": "vit", "exit_margin": 0.0, "experts": [
        {"name": "vit", "backend": "hf_classifier", "model": str(model), "device": "cpu", "max_batch": 8,
         "max_wait_ms": 1.0, "options": {"positive_labels": ["Roadwork"]}}]}]}

    async def ask(process: Any, seed: int) -> tuple[float, float]:
        """One request through the client's own `query`; a trace of a refused request would measure the refusal."""
        dendrite = make_dendrite(validator)
        try:
            sent = time.monotonic()
            outcome = await query(dendrite, axon_info("127.0.0.1", process.port, process.hotkey),
                                  encode_jpeg(synthetic_image(seed, (640, 480))))
            if outcome.status_code != 200:
                raise SystemExit(f"request {seed} answered {outcome.status_code} {outcome.message}: nothing to trace")
            return sent, time.monotonic()
        finally:
            await dendrite.aclose_session()

    with run_miner(run, run / "wallets", miner, cascade, extra={"scheduler": {"cache_size": 0}}) as process:
        for seed in range(3):
            asyncio.run(ask(process, seed))
        time.sleep(1.0)
        sent, received = asyncio.run(ask(process, 99))
        time.sleep(0.5)
        os.kill(process.process.pid, signal.SIGUSR2)  # the trace written now
        time.sleep(2.0)
        (out / "window.json").write_text(json.dumps({"sent": sent, "received": received,
                                                     "pid": process.process.pid}))


def analyse(out: Path) -> dict[str, Any]:
    window = json.loads((out / "window.json").read_text())
    calls = []
    trace = os.environ.get("SN72_TRACE_OUT") or str(out / "ev")
    for line in Path(f"{trace}.{window['pid']}").read_text().splitlines():
        stamp, thread, path, function = line.split("\t")
        if window["sent"] <= float(stamp) <= window["received"] and not thread.startswith(BACKGROUND):
            calls.append((thread, path, function))
    threads = [thread for thread, _, _ in calls]
    entries: collections.Counter[str] = collections.Counter()
    last: dict[str, str] = {}
    for thread, path, _ in calls:
        if last.get(thread) != path:
            entries[path] += 1
        last[thread] = path
    return {
        "calls": len(calls),
        "files": dict(sorted(collections.Counter(path for _, path, _ in calls).items())),
        "entries": dict(sorted(entries.items())),
        "thread_hand_offs": [f"{a} -> {b}" for a, b in itertools.pairwise(threads) if a != b],
    }


if __name__ == "__main__":
    if sys.argv[1] == "--analyse":
        report = analyse(Path(sys.argv[2]))
        (Path(sys.argv[2]) / "trace.json").write_text(json.dumps(report, indent=1))
        print(json.dumps({k: (len(v) if isinstance(v, dict | list) else v) for k, v in report.items()}))
    else:
        drive(Path(sys.argv[1]), "--old-layout" in sys.argv)
