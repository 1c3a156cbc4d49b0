"""`sn72-bench traffic`: validator-like traffic through the real miner process at chosen escalation rates, then a
10x organic burst; the client's view and the miner's own counters.

One miner process (`python -m neurons.miner`, offline, on loopback) serves the cascade for every run; validators
are throwaway wallets with permits in a local metagraph, each request a real signed dendrite call with the
validators' 9 s timeout. Requests arrive open-loop (Poisson, fixed seed) at `--rps`, images are distinct JPEGs of
mixed sizes (224x224 to 1920x1080), the result cache is off and the per-hotkey rate limit too (the cascade is
measured, not the guards).

The escalation rate is set through the cascade file and the miner's hot reload (SIGHUP, a calibration reload: no
model is touched); `sn72_lab/escalation.py` says how. Runs, in order: `fit` (level 1 alone answers: its
answers fit the rates; sent at the burst rate, so it is also the level-1-only figure), one run per `--rates`
entry, then `burst` (`--burst-factor` x `--rps` for `--burst-s` at `--burst-escalation`). Each run reports
p50/p99 latency, late answers (the client's timeouts and the miner's own late counts: both must be 0), answers by
status and by levels run, answers from the prior, per-level time, batch sizes, and device memory (peak of
`sn72_miner_gpu_memory_bytes` sampled every 0.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cascade.config import load_cascade
from sn72_lab import escalation
from sn72_lab.bench_levels import MIXED_SIZES

GIB = 2**30
TIMEOUT_S = 9.0  # the validators' dendrite timeout


def make_payloads(count: int) -> tuple[list[str], list[str]]:
    """`count` distinct base64 JPEGs cycling through MIXED_SIZES, and each one's size."""
    from sn72_tools.client import encode_jpeg, synthetic_image

    sizes = [MIXED_SIZES[i % len(MIXED_SIZES)] for i in range(count)]
    return [encode_jpeg(synthetic_image(10_000 + i, size)) for i, size in enumerate(sizes)], [f"{w}x{h}" for w, h in
                                                                                               sizes]


def cascade_for(base: dict[str, Any], version: str, level1: escalation.Escalation | None) -> dict[str, Any]:
    """The bench cascade with level 1's calibration and the exit margins of one run: after level 1, nothing exits
    before the last level (margin 0.5), so what leaves level 1 goes all the way."""
    cascade = yaml.safe_load(yaml.safe_dump(base))
    cascade["version"] = version
    cascade["answer"] = {"policy": "calibrated"}  # the fit reads level 1's probability off the answers sent
    for level in cascade["levels"][1:]:
        level["exit_margin"] = 0.5
    first = cascade["levels"][0]
    first["exit_margin"] = 0.0 if level1 is None else level1.exit_margin
    for expert in first["experts"]:
        expert["calibration"] = level1.calibration() if level1 is not None else {"temperature": 1.0, "bias": 0.0}
    return cascade


class DendritePool:
    """Signed callers, one request at a time each (the axon refuses a nonce older than its caller's last, which
    concurrent requests of one dendrite can be when they arrive out of order); more are made when all are busy."""

    def __init__(self, wallets: Sequence[Any]) -> None:
        self.wallets, self.made = list(wallets), 0
        self.idle: asyncio.Queue[Any] = asyncio.Queue()
        self.all: list[Any] = []

    async def acquire(self) -> Any:
        if self.idle.empty():
            import aiohttp

            from sn72_tools.client import make_dendrite

            dendrite = make_dendrite(self.wallets[self.made % len(self.wallets)])
            dendrite._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            self.made += 1
            self.all.append(dendrite)
            return dendrite
        return self.idle.get_nowait()

    async def close(self) -> None:
        for dendrite in self.all:
            await dendrite.aclose_session()


async def paced(port: int, hotkey: str, wallets: Sequence[Any], payloads: Sequence[str], rate_rps: float,
                seed: int) -> tuple[list[Any], float]:
    """Every payload once, at Poisson arrival times of `rate_rps`; the outcomes in order and the sending span."""
    from sn72_tools.client import axon_info, query

    rng = random.Random(seed)
    offsets, at = [], 0.0
    for _ in payloads:
        offsets.append(at)
        at += rng.expovariate(rate_rps)
    axon = axon_info("127.0.0.1", port, hotkey)
    pool = DendritePool(wallets)
    began = time.monotonic()

    async def one(index: int) -> Any:
        await asyncio.sleep(max(0.0, began + offsets[index] - time.monotonic()))
        dendrite = await pool.acquire()
        try:
            return await query(dendrite, axon, payloads[index], TIMEOUT_S)
        finally:
            pool.idle.put_nowait(dendrite)

    try:
        outcomes = await asyncio.gather(*(one(i) for i in range(len(payloads))))
    finally:
        await pool.close()
    return list(outcomes), offsets[-1] if offsets else 0.0


class MemorySampler:
    """Peaks of the miner's `sn72_miner_gpu_memory_bytes{device,kind}` over a run, scraped every `interval_s`."""

    def __init__(self, metrics_port: int, interval_s: float = 0.5) -> None:
        self.port, self.interval_s = metrics_port, interval_s
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _sample(self) -> None:
        from sn72_lab.loadtest import scrape

        for key, value in scrape(self.port).items():
            if key.startswith("sn72_miner_gpu_memory_bytes{"):
                labels = dict(part.split("=", 1) for part in key[key.index("{") + 1: -1].split(","))
                per_device = self.peaks.setdefault(labels["device"], {})
                per_device[labels["kind"]] = max(per_device.get(labels["kind"], 0.0), value / GIB)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()


def delta(after: dict[str, float], before: dict[str, float], prefix: str, *labels: str) -> dict[Any, float]:
    """How much the series `prefix{...}` grew over the run, per value of `labels` (a tuple of values for several),
    summed over any other labels. Keys are scrape keys, `name{label=value,...}` (loadtest.scrape)."""
    out: dict[Any, float] = {}
    for key, value in after.items():
        if not key.startswith(prefix + "{"):
            continue
        named = dict(pair.split("=", 1) for pair in key[len(prefix) + 1 : -1].split(","))
        if all(label in named for label in labels):
            values = tuple(named[label] for label in labels)
            name = values[0] if len(values) == 1 else values
            out[name] = out.get(name, 0.0) + value - before.get(key, 0.0)
    return dict(sorted(out.items()))


def _level_means_ms(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Mean time per request in each level, keyed by level number from 1 (the metric's label counts from 0)."""
    sums = delta(after, before, "sn72_miner_level_seconds_sum", "level")
    counts = delta(after, before, "sn72_miner_level_seconds_count", "level")
    return {str(int(level) + 1): 1000.0 * sums[level] / counts[level] for level in sums if counts.get(level)}


def planned_gb(lines: Sequence[str]) -> dict[str, float]:
    """GB the placement plan gives each GPU (its start-up log line `cuda:N: K replica(s), X GB planned, ...`)."""
    import re

    plan = {}
    for line in lines:
        match = re.search(r"(cuda:\d+): \d+ replica\(s\), ([\d.]+) GB planned", line)
        if match:
            plan[match.group(1)] = float(match.group(2))
    return plan


def _batches(after: dict[str, float], before: dict[str, float]) -> dict[str, dict[str, float]]:
    sums = delta(after, before, "sn72_miner_batch_size_sum", "replica")
    counts = delta(after, before, "sn72_miner_batch_size_count", "replica")
    return {replica: {"batches": counts[replica], "mean_size": sums[replica] / counts[replica]}
            for replica in sums if counts.get(replica)}


def measure(process: Any, wallets: Sequence[Any], payloads: Sequence[str], rate_rps: float,
            seed: int) -> dict[str, Any]:
    """One run: the client's view and the miner's counters over it."""
    from sn72_lab.loadtest import engine_late_answers, miner_late, scrape, settled, summarise

    before = scrape(process.metrics_port)
    with MemorySampler(process.metrics_port) as memory:
        outcomes, span_s = asyncio.run(paced(process.port, process.hotkey, wallets, payloads, rate_rps, seed))
        after = settled(process.metrics_port)
    client = summarise(outcomes, TIMEOUT_S, span_s)
    keys = {k.split("outcome=")[1].rstrip("}") for k in after if k.startswith("sn72_miner_axon_total{")}
    client.miner = {key: after.get(f"sn72_miner_axon_total{{outcome={key}}}", 0.0)
                    - before.get(f"sn72_miner_axon_total{{outcome={key}}}", 0.0) for key in sorted(keys)}
    statuses = delta(after, before, "sn72_miner_requests_total", "status")
    levels = delta(after, before, "sn72_miner_levels_run_total", "levels")
    answered = sum(statuses.values())
    last = str(max((int(k) for k in levels), default=0))
    return {
        "requests": len(payloads),
        "rate_rps": rate_rps,
        "sent_rps": (len(payloads) - 1) / span_s if span_s > 0 else float("nan"),
        "latency_ms": client.latency_ms,
        "valid_answers": client.valid,
        "late_answers": client.client_timeouts,  # what validators with a 9 s timeout would score as late
        "miner_late": miner_late(client),
        "engine_late_answers": engine_late_answers(after) - engine_late_answers(before),
        "other_failures": client.other_failures,
        "status_codes": client.status_codes,
        "answers_by_status": statuses,
        "answers_from_prior": statuses.get("prior", 0.0),
        "answers_by_levels_run": levels,
        "measured_escalation": levels.get(last, 0.0) / answered if answered else float("nan"),
        "level_mean_ms": _level_means_ms(after, before),
        "batches": _batches(after, before),
        "axon_outcomes": client.miner,
        "device_memory_peak_gb": memory.peaks,
        "predictions": [o.prediction if o.ok else None for o in outcomes],
    }


def _reload(process: Any, folder: Path, cascade: dict[str, Any], timeout_s: float = 60.0) -> float:
    """Write the run's cascade and SIGHUP the miner; the seconds until the miner reports serving it."""
    from sn72_lab.loadtest import scrape

    (folder / "cascade.yaml").write_text(yaml.safe_dump(cascade))
    began = time.monotonic()
    process.process.send_signal(signal.SIGHUP)
    wanted = f"version={cascade['version']}"
    while time.monotonic() - began < timeout_s:
        if any(k.startswith("sn72_miner_cascade_info{") and wanted in k for k in scrape(process.metrics_port)):
            return time.monotonic() - began
        if not process.alive():
            raise RuntimeError("the miner exited during a reload:\n" + "\n".join(process.lines[-20:]))
        time.sleep(0.1)
    raise RuntimeError(f"the miner did not serve {cascade['version']} within {timeout_s}s of SIGHUP")


def _escalation_report(fitted: escalation.Escalation, sizes: Sequence[str]) -> dict[str, Any]:
    return {"target_escalation": fitted.target, "planned_escalation": fitted.planned,
            "level1_calibration": fitted.calibration(), "level1_exit_margin": fitted.exit_margin,
            "escalated_sizes": dict(Counter(sizes[i] for i in fitted.escalated))}


def save_partial(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """The report so far into --json: a step cut short by its time limit still leaves every finished run."""
    if getattr(args, "json", None):
        import json

        args.json.write_text(json.dumps(report, indent=2))


def run_traffic(args: argparse.Namespace) -> dict[str, Any]:
    """The run's wallets, configs and metagraph live in a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="sn72-traffic-") as folder:
        return _run_traffic_in(Path(folder), args)


def _run_traffic_in(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from sn72_lab.offline import ensure_wallet, run_miner, write_offline_metagraph

    base = load_cascade(args.cascade).model_dump(mode="json", exclude_none=True)
    steady = max(2, round(args.rps * args.duration_s))
    burst_count = max(2, round(args.rps * args.burst_factor * args.burst_s))
    payloads, sizes = make_payloads(max(steady, burst_count))
    miner = ensure_wallet(folder / "wallets", "miner")
    validators = [ensure_wallet(folder / "wallets", f"validator{i}") for i in range(args.wallets)]
    write_offline_metagraph(folder / "metagraph.json", 72, miner.hotkey.ss58_address,
                            {w.hotkey.ss58_address: 1000.0 * (i + 1) for i, w in enumerate(validators)})
    extra = {"guards": {"rate_per_s": 0.0}, "scheduler": {"cache_size": 0}, "log_level": "INFO",
             # one address for every simulated validator: no per-address share of the request slots
             "axon": {"max_connections_per_ip": 4 * burst_count + 64, "max_concurrent_requests_per_ip": 100_000}}
    report: dict[str, Any] = {"mode": "traffic", "cascade": str(args.cascade), "rps": args.rps,
                              "duration_s": args.duration_s, "timeout_s": TIMEOUT_S, "runs": {}}
    began = time.monotonic()
    print(f"starting the miner with {args.cascade} ({len(payloads)} distinct JPEGs ready)", flush=True)
    with run_miner(folder, folder / "wallets", miner, cascade_for(base, "bench-fit", None), extra=extra,
                   ready_timeout_s=args.ready_timeout_s) as process:
        report["miner_ready_s"] = time.monotonic() - began
        report["startup_log"] = [line for line in process.lines if "placement" in line or "GB planned" in line
                                 or ("#" in line and "GB" in line) or "ready" in line.lower()][:40]
        report["planned_gb_by_device"] = planned_gb(process.lines)
        fit_rate = args.rps * args.burst_factor
        print(f"run fit: level 1 alone, {len(payloads)} requests at {fit_rate:g}/s", flush=True)
        fit_run = measure(process, validators, payloads, fit_rate, seed=1)
        probabilities = fit_run.pop("predictions")
        known = [i for i, p in enumerate(probabilities) if p is not None]
        report["runs"]["fit"] = {"target_escalation": 0.0, "planned_escalation": 0.0, **fit_run,
                                 "fitted_on": len(known)}
        save_partial(args, report)
        plans = [(f"escalation-{round(100 * rate)}", rate, payloads[:steady], args.rps) for rate in args.rates]
        plans.append(("burst", args.burst_escalation, payloads[:burst_count], args.rps * args.burst_factor))
        for index, (name, rate, run_payloads, rate_rps) in enumerate(plans, 2):
            scope = [i for i in known if i < len(run_payloads)]
            fitted = escalation.fit([probabilities[i] for i in scope], rate)  # type: ignore[misc]
            fitted = escalation.Escalation(fitted.target, fitted.temperature, fitted.bias, fitted.exit_margin,
                                           fitted.planned, tuple(scope[i] for i in fitted.escalated))
            reload_s = _reload(process, folder, cascade_for(base, f"bench-{name}", fitted))
            print(f"run {name}: {len(run_payloads)} requests at {rate_rps:g}/s, escalating {fitted.planned:.0%} "
                  f"(target {rate:.0%})", flush=True)
            result = measure(process, validators, run_payloads, rate_rps, seed=index)
            result.pop("predictions")
            report["runs"][name] = {**_escalation_report(fitted, sizes), "reload_s": reload_s, **result}
            save_partial(args, report)
    return report


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("traffic", help="validator-like traffic through the real miner at escalation rates + a burst")
    p.add_argument("--cascade", type=Path, required=True)
    p.add_argument("--rps", type=float, default=4.0, help="validator-like arrival rate, requests per second")
    p.add_argument("--duration-s", type=float, default=25.0, help="length of each escalation run")
    p.add_argument("--rates", type=_floats, default=[0.1, 0.3, 1.0], help="escalation rates to the last level")
    p.add_argument("--burst-factor", type=float, default=10.0, help="the burst's rate over --rps")
    p.add_argument("--burst-s", type=float, default=10.0, help="length of the burst")
    p.add_argument("--burst-escalation", type=float, default=0.3, help="escalation rate during the burst")
    p.add_argument("--wallets", type=int, default=8, help="validator wallets the requests come from")
    p.add_argument("--ready-timeout-s", type=float, default=300.0, help="longest wait for MINER READY")
    p.add_argument("--json", type=Path)
