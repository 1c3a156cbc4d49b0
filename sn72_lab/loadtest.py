"""Bursts and drains against a real miner process, measured from the client's side and the miner's.

Shared by `scripts/lifetime_bench.py` (full size, figures for the docs) and the end-to-end tests
(small size). A burst sends every request at once through real dendrites, each with a connection
pool large enough that no request waits on the client's side before it is sent: the client's own
timeout then starts when the request is signed, as a validator's does.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sn72_tools.client import Outcome, axon_info, make_dendrite, query


@dataclass
class BurstReport:
    requests: int
    timeout_s: float
    valid: int = 0  # 200 with a prediction in [0, 1]: what the dendrite hands a validator as an answer
    client_timeouts: int = 0  # what a validator with that timeout saw as late
    other_failures: int = 0
    status_codes: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    miner: dict[str, float] = field(default_factory=dict)  # the miner's own counters after the burst

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def scrape(metrics_port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """Every sample of the miner's /metrics as `name{label=value,...}` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=10).read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def settled(metrics_port: int, timeout_s: float = 60.0) -> dict[str, float]:
    """A scrape once the miner has finished every request it accepted (requests the client gave up on
    are still finished, or skipped, and counted: they are the late ones)."""
    until = time.monotonic() + timeout_s
    while True:
        samples = scrape(metrics_port)
        busy = sum(v for k, v in samples.items() if k.startswith("sn72_miner_http_requests{"))
        if busy == 0 or time.monotonic() > until:
            return samples
        time.sleep(0.2)


def outcome_count(samples: dict[str, float], outcome: str) -> float:
    return samples.get(f"sn72_miner_axon_total{{outcome={outcome}}}", 0.0)


async def _unpooled_dendrites(wallets: Sequence[Any]) -> list[Any]:
    import aiohttp

    dendrites = [make_dendrite(wallet) for wallet in wallets]
    for dendrite in dendrites:
        dendrite._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    return dendrites


async def send_all(port: int, miner_hotkey: str, wallets: Sequence[Any], payloads: Sequence[str],
                   timeout_s: float) -> tuple[list[Outcome], float]:
    """Every payload at once (round-robin over the wallets); the outcomes in order and the wall time."""
    dendrites = await _unpooled_dendrites(wallets)
    axon = axon_info("127.0.0.1", port, miner_hotkey)
    try:
        began = time.monotonic()
        outcomes = await asyncio.gather(*(query(dendrites[i % len(dendrites)], axon, payload, timeout_s)
                                          for i, payload in enumerate(payloads)))
        return list(outcomes), time.monotonic() - began
    finally:
        for dendrite in dendrites:
            await dendrite.aclose_session()


def summarise(outcomes: Sequence[Outcome], timeout_s: float, elapsed_s: float) -> BurstReport:
    report = BurstReport(len(outcomes), timeout_s, elapsed_s=elapsed_s)
    codes: Counter[str] = Counter()
    latencies = []
    for outcome in outcomes:
        codes[str(outcome.status_code)] += 1
        if outcome.ok:  # the dendrite returned the answer: a validator scores it, whatever its own lag
            report.valid += 1
            latencies.append(outcome.latency_s)
        elif outcome.status_code == 408:  # the dendrite's timeout fired first
            report.client_timeouts += 1
        else:
            report.other_failures += 1
    report.status_codes = dict(codes)
    if latencies:
        from sn72_tools.client import percentiles

        report.latency_ms = {k: v * 1000.0 for k, v in percentiles(latencies, (50, 99, 100)).items()}
    return report


def burst(port: int, metrics_port: int, miner_hotkey: str, wallets: Sequence[Any], payloads: Sequence[str],
          timeout_s: float = 9.0) -> BurstReport:
    """All at once; the client's view, and the miner's late/answer counters over the same burst."""
    before = scrape(metrics_port)
    outcomes, elapsed_s = asyncio.run(send_all(port, miner_hotkey, wallets, payloads, timeout_s))
    after = settled(metrics_port)
    report = summarise(outcomes, timeout_s, elapsed_s)
    keys = {k.split("outcome=")[1].rstrip("}") for k in after if k.startswith("sn72_miner_axon_total{")}
    report.miner = {key: outcome_count(after, key) - outcome_count(before, key) for key in sorted(keys)}
    # the engine's own count: answers after its deadline, whatever the cause
    report.miner["engine_late_answers"] = engine_late_answers(after) - engine_late_answers(before)
    return report


def engine_late_answers(samples: dict[str, float]) -> float:
    """sn72_miner_late_answers_total summed over its causes."""
    return sum(value for key, value in samples.items() if key.startswith("sn72_miner_late_answers_total{"))


def miner_late(report: BurstReport) -> int:
    """Requests the miner knows its caller did not get in time: answered late, refused late, or skipped."""
    return int(sum(report.miner.get(k, 0) for k in ("late_answer", "late_other", "late_skipped")))


def accepted(metrics_port: int) -> float | None:
    """Requests the miner has taken in (being processed, waiting their turn, or answered); None if it
    does not say (an older miner)."""
    samples = scrape(metrics_port)
    at_http = [v for k, v in samples.items() if k.startswith("sn72_miner_http_requests{")]
    if not at_http:
        return None
    done = sum(v for k, v in samples.items()
               if k.startswith("sn72_miner_axon_total{outcome=answered_") or k.startswith(
                   "sn72_miner_axon_total{outcome=refused_"))
    return sum(at_http) + done


def drain(process: Any, wallets: Sequence[Any], payloads: Sequence[str], timeout_s: float = 9.0,
          settle_s: float = 3.0) -> tuple[BurstReport, int]:
    """Send everything at once, SIGTERM the miner once it has taken every request in (or after `settle_s`
    for a miner that does not say); the client's view and the exit code."""
    before = accepted(process.metrics_port)

    def wait_until_taken_in() -> None:
        until = time.monotonic() + 60.0
        if before is None:
            time.sleep(settle_s)
            return
        while time.monotonic() < until:
            now = accepted(process.metrics_port) or 0.0
            if now - before >= len(payloads):
                return
            time.sleep(0.05)

    async def scenario() -> tuple[list[Outcome], float]:
        sending = asyncio.create_task(send_all(process.port, process.hotkey, wallets, payloads, timeout_s))
        await asyncio.get_running_loop().run_in_executor(None, wait_until_taken_in)
        process.process.send_signal(signal.SIGTERM)
        return await sending

    outcomes, elapsed_s = asyncio.run(scenario())
    code = process.process.wait(60)
    return summarise(outcomes, timeout_s, elapsed_s), code


@dataclass(frozen=True)
class Timed:
    """One request of a sustained load: when it was sent and answered (monotonic), and what came back."""

    payload: int
    sent_s: float
    done_s: float
    outcome: Outcome


class SustainedLoad:
    """`concurrency` callers, each sending the next payload as soon as its last one is answered, on a thread of
    its own, until `stop()`: load that spans an event in the miner (a reload) while the test drives it."""

    def __init__(self, port: int, miner_hotkey: str, wallets: Sequence[Any], payloads: Sequence[str],
                 timeout_s: float = 9.0, concurrency: int = 8) -> None:
        import threading

        self.args = (port, miner_hotkey, list(wallets), list(payloads), timeout_s, concurrency)
        self.records: list[Timed] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="sustained-load", daemon=True)

    def start(self) -> SustainedLoad:
        self._thread.start()
        return self

    def answered_since(self, since_s: float) -> int:
        """Requests sent at or after `since_s` and already answered."""
        return sum(1 for record in list(self.records) if record.sent_s >= since_s)

    def stop(self, timeout_s: float = 60.0) -> list[Timed]:
        self._stop.set()
        self._thread.join(timeout_s)
        return list(self.records)

    async def _run(self) -> None:
        port, hotkey, wallets, payloads, timeout_s, concurrency = self.args
        # One dendrite (one uuid) per caller: the axon refuses a nonce older than the last one of a uuid, which
        # concurrent requests of one dendrite can be when they arrive out of order.
        dendrites = await _unpooled_dendrites([wallets[i % len(wallets)] for i in range(concurrency)])
        axon = axon_info("127.0.0.1", port, hotkey)
        counter = iter(range(1 << 62))

        async def caller(index: int) -> None:
            dendrite = dendrites[index]
            while not self._stop.is_set():
                n = next(counter)
                sent_s = time.monotonic()
                outcome = await query(dendrite, axon, payloads[n % len(payloads)], timeout_s)
                self.records.append(Timed(n % len(payloads), sent_s, time.monotonic(), outcome))

        try:
            await asyncio.gather(*(caller(i) for i in range(concurrency)))
        finally:
            for dendrite in dendrites:
                await dendrite.aclose_session()
