"""sn72-reload-bench: each kind of hot reload on the real miner under load, measured from outside it.

    sn72-reload-bench --device cuda:0 --size base --out reload-gpu.json   # a GPU box, under 2 minutes
    sn72-reload-bench --device cpu --size tiny                            # anywhere

Builds two random-weight ViT classifiers locally (tiny ones, or real-size ViT-B/16 at 224 with
`--size base`), starts the miner offline on cascade A (calibration bias -12: answers near 0), keeps
`--clients` validator-style callers busy, and reloads twice by SIGHUP:
  calibration   the same model with bias +12 (nothing loaded; answers near 1 afterwards)
  models        model B with bias -12 (loaded and warmed beside A, then A is freed)
For each: requests answered across the reload (in flight at any moment from the signal to the swap),
refused, failed or late ones, the miner's time to swap (its log line), whether every answer sent
after the swap is the new cascade's, and the miner's memory: device memory (nvidia-smi, this process,
else the whole GPU) on CUDA, resident memory on the CPU; median over the second before the signal,
peak from the signal until the old cascade is freed, median over the settle time after that.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HIGH, LOW = 0.99, 0.01


class MemorySampler(threading.Thread):
    """Memory of one process every `interval_s`: device MiB (CUDA) or resident MiB (CPU)."""

    def __init__(self, pid: int, device: str, interval_s: float = 0.1) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.pid, self.device, self.interval_s = pid, device, interval_s
        self.samples: list[tuple[float, float]] = []
        self.source = "process resident memory (VmRSS)" if device == "cpu" else "nvidia-smi"
        self._halt = threading.Event()  # not `_stop`: Thread has a method of that name

    def read_mib(self) -> float | None:
        if self.device == "cpu":
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
            return None
        index = self.device.split(":")[1] if ":" in self.device else "0"
        apps = _smi(["--query-compute-apps=pid,used_memory", "-i", index])
        mine = [float(used) for pid, used in (row.split(",") for row in apps if "," in row) if int(pid) == self.pid]
        if mine:
            self.source = "nvidia-smi, the miner's process"
            return sum(mine)
        self.source = "nvidia-smi, the whole GPU (the miner's pid is not visible here)"
        used = _smi(["--query-gpu=memory.used", "-i", index])
        return float(used[0]) if used else None

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                value = self.read_mib()
            except (OSError, ValueError):
                continue
            if value is not None:
                self.samples.append((time.monotonic(), value))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def between(self, start_s: float, end_s: float) -> list[float]:
        return [value for at_s, value in self.samples if start_s <= at_s <= end_s]


def _smi(query: list[str]) -> list[str]:
    out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=10, check=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _cascade(model: Path, name: str, bias: float, device: str, size: str) -> dict[str, Any]:
    expert = {"name": name, "backend": "hf_classifier", "model": str(model), "device": device,
              "max_batch": 32 if size == "base" else 8, "max_wait_ms": 2.0, "warmup_batches": 1,
              "memory_gb": 1.0, "calibration": {"bias": bias}, "options": {"positive_labels": ["Roadwork"]}}
    # calibrated answers: which cascade answered is read off the answer's value (bias +-12)
    return {"version": f"bench-{name}", "answer": {"policy": "calibrated"},
            "levels": [{"name": "only", "exit_margin": 0.3, "experts": [expert]}]}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _wait(condition: Any, what: str, timeout_s: float = 300.0) -> float:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline_s:
            raise TimeoutError(f"not seen in {timeout_s:.0f}s: {what}")
        time.sleep(0.02)
    return time.monotonic()


def run_phase(process: Any, cascade_file: Path, content: dict[str, Any], freed: str | None, settle_s: float) -> dict:
    """Write the cascade, SIGHUP, wait for the swap (and the release of what it replaced), keep the load settle_s."""
    import yaml

    def lines(text: str) -> list[str]:
        return [line for line in list(process.lines) if text in line]

    done_before = len(lines("reload (SIGHUP)"))
    cascade_file.write_text(yaml.safe_dump(content))
    trigger_s = time.monotonic()
    process.process.send_signal(signal.SIGHUP)
    swapped_s = _wait(lambda: len(lines("reload (SIGHUP)")) > done_before, "the reload's log line")
    line = lines("reload (SIGHUP)")[-1]
    if "done in" not in line:
        raise RuntimeError(f"the reload did not go through: {line}")
    freed_s = _wait(lambda: bool(lines(freed)), f"'{freed}'") if freed else swapped_s
    time.sleep(settle_s)  # the load goes on: answers after the swap are counted over this time
    match = re.search(r"done in ([0-9.]+)s", line)
    return {"trigger_s": trigger_s, "swapped_s": swapped_s, "freed_s": freed_s, "end_s": time.monotonic(),
            "miner_swap_s": float(match.group(1)) if match else None, "log": line.split(" - ", 1)[-1]}


def summarise(phase: dict, records: list[Any], sampler: MemorySampler, new_is_high: bool,
              timeout_s: float) -> dict[str, Any]:
    trigger_s, swapped_s, freed_s, end_s = phase["trigger_s"], phase["swapped_s"], phase["freed_s"], phase["end_s"]
    across = [r for r in records if r.sent_s <= swapped_s and r.done_s >= trigger_s]
    after = [r for r in records if swapped_s < r.sent_s <= end_s]
    window = [r for r in records if trigger_s - 1.0 <= r.sent_s <= end_s]
    bad = [r for r in window if not r.outcome.ok or r.outcome.latency_s > timeout_s]
    new = [r for r in after if (r.outcome.prediction > HIGH if new_is_high else r.outcome.prediction < LOW)]
    return {
        "requests_across_reload": len(across),
        "requests_after_swap": len(after),
        "after_swap_from_new_cascade": len(new),
        "refused_failed_or_late": len(bad),
        "status_codes": sorted({r.outcome.status_code for r in window}),
        "time_to_swap_s": phase["miner_swap_s"],
        "signal_to_swap_seen_s": round(swapped_s - trigger_s, 3),
        "signal_to_old_freed_s": round(freed_s - trigger_s, 3),
        "memory_mib": {"before": _median(sampler.between(trigger_s - 1.0, trigger_s)),
                       "peak_during": max(sampler.between(trigger_s, freed_s + 0.5), default=None),
                       "after": _median(sampler.between(freed_s + 0.5, end_s))},
        "log": phase["log"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sn72-reload-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    parser.add_argument("--size", choices=("tiny", "base"), default="tiny", help="tiny ViTs or ViT-B/16 at 224")
    parser.add_argument("--clients", type=int, default=8, help="concurrent validator-style callers (default 8)")
    parser.add_argument("--settle-s", type=float, default=4.0, help="load kept after each swap (default 4)")
    parser.add_argument("--timeout-s", type=float, default=9.0, help="the callers' timeout (validators: 9)")
    parser.add_argument("--work", type=Path, default=None, help="folder for models and wallets (default: temporary)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not re.fullmatch(r"cuda:\d+", args.device):
        print(f"error: --device must be cpu or cuda:N, got {args.device!r}", file=sys.stderr)
        return 2
    if args.clients < 1 or args.settle_s < 0:
        print("error: --clients must be >= 1 and --settle-s >= 0", file=sys.stderr)
        return 2
    try:
        if args.work is not None:
            report = bench(args.work, args)
        else:
            with tempfile.TemporaryDirectory(prefix="sn72-reload-bench-") as work:  # models and wallets, removed after
                report = bench(Path(work), args)
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


def bench(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from sn72_lab.loadtest import SustainedLoad
    from sn72_lab.offline import ensure_wallet, run_miner, write_offline_metagraph
    from sn72_lab.tiny_models import build_tiny_vit, build_vit_b16
    from sn72_tools.client import encode_jpeg, synthetic_image

    build = build_vit_b16 if args.size == "base" else build_tiny_vit
    print(f"building two {args.size} ViT classifiers in {work / 'models'}", file=sys.stderr, flush=True)
    model_a, model_b = build(work / "models" / "vit-a", seed=0), build(work / "models" / "vit-b", seed=1)
    wallets = work / "wallets"
    miner = ensure_wallet(wallets, "miner")
    callers = [ensure_wallet(wallets, f"validator{i}") for i in range(min(args.clients, 4))]
    write_offline_metagraph(work / "metagraph.json", 72, miner.hotkey.ss58_address,
                            {w.hotkey.ss58_address: 1000.0 for w in callers})
    side = (640, 480)
    payloads = [encode_jpeg(synthetic_image(2000 + i, side)) for i in range(64)]
    # one address for every simulated validator: no per-address share of the request slots
    extra = {"guards": {"rate_per_s": 0.0}, "log_level": "INFO",
             "axon": {"max_connections_per_ip": 1024, "max_concurrent_requests_per_ip": 100_000}}
    first = _cascade(model_a, "vit-a", -12.0, args.device, args.size)
    print("starting the miner on cascade A", file=sys.stderr, flush=True)
    with run_miner(work, wallets, miner, first, extra=extra) as process:
        sampler = MemorySampler(process.process.pid, args.device)
        sampler.start()
        load = SustainedLoad(process.port, process.hotkey, callers, payloads, args.timeout_s, args.clients).start()
        try:
            _wait(lambda: len(load.records) >= 4 * args.clients, "the first answers")
            time.sleep(1.5)  # a second of memory samples under load before the first signal
            print("reload 1: calibration only", file=sys.stderr, flush=True)
            calibration = run_phase(process, work / "cascade.yaml", _cascade(model_a, "vit-a", 12.0, args.device,
                                                                             args.size), None, args.settle_s)
            print("reload 2: a new model", file=sys.stderr, flush=True)
            models = run_phase(process, work / "cascade.yaml", _cascade(model_b, "vit-b", -12.0, args.device,
                                                                        args.size), "freed vit-a@", args.settle_s)
        finally:
            records = load.stop()
            sampler.stop()
    return {
        "device": args.device, "size": args.size, "clients": args.clients, "timeout_s": args.timeout_s,
        "requests": len(records), "memory_source": sampler.source,
        "calibration": summarise(calibration, records, sampler, True, args.timeout_s),
        "models": summarise(models, records, sampler, False, args.timeout_s),
    }


if __name__ == "__main__":
    sys.exit(main())
