#!/usr/bin/env python
"""Load generator and benchmarks; JSON out (--json FILE) and a short table on stdout.

    sn72-bench engine --cascade config/cascade.demo.yaml --requests 500 --concurrency 64
    sn72-bench engine --cascade C --requests 200 --burst --slow-last-level-s 1.5     # deadline stress
    sn72-bench axon --cascade C --requests 200 --concurrency 16 --wallets 4           # through a real axon
    sn72-bench roundtrip --cascade C --requests 200                                   # header cache on vs off
    sn72-bench axon-vs-stock --cascade C --requests 1500 --concurrency 64 --wallets 8 # stock axon, miner, alternated
    sn72-bench find-batch --cascade C --expert vit --budget-ms 100                    # best max_batch per expert
    sn72-bench backends --cascade C --device cuda:0                                   # batch 1 / 32 per expert
    sn72-bench baseline --model PATH --device cuda:0                                  # natix-style pipeline
    sn72-bench levels --cascade config/cascade.bench-production.yaml --device cuda:0  # per level, memory vs memory_gb
    sn72-bench traffic --cascade config/cascade.bench-production.yaml                 # real miner, escalation, burst
    sn72-bench report OUT                         # OUT/levels.json + OUT/traffic.json -> OUT/summary.md (tables)

`engine` drives the in-process engine (decode included, axon excluded); `axon` starts the miner in
offline mode and drives it with real dendrites from several throwaway wallets, concurrently.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cascade.config import EngineConfig, ExpertConfig, SchedulerConfig, load_cascade
from cascade.event_loop import EventLoopKind, new_event_loop
from cascade.experts.base import WORKER_STAGES
from sn72_lab import bench_levels, bench_models, bench_report, bench_stages, bench_traffic
from sn72_lab.bench_stand_in import null_factory
from sn72_tools.client import encode_jpeg, percentiles, synthetic_image


def payloads(count: int, size: tuple[int, int], distinct: int | None = None) -> list[str]:
    """`count` base64 JPEGs; `distinct` of them different (the rest repeat, exercising the cache)."""
    distinct = distinct or count
    unique = [encode_jpeg(synthetic_image(seed, size)) for seed in range(distinct)]
    return [unique[i % distinct] for i in range(count)]


def steady_rps(ends: Sequence[float], trim: float = 0.1) -> float | None:
    """Answers a second between the first and the last `trim` of them (None for fewer than 20 answers).

    requests / elapsed also counts a closed loop's start (every caller's first request at once: new connections,
    first batches) and its tail (fewer callers than `concurrency` left): seconds each in a run of a few seconds, and
    unequal between the engine alone and the axon (which opens a connection per dendrite). The middle of the run is
    where both are at their own pace; both figures are reported.
    """
    ordered = sorted(ends)
    first, last = int(len(ordered) * trim), int(len(ordered) * (1 - trim)) - 1
    if len(ordered) < 20 or ordered[last] <= ordered[first]:  # fewer than 20: no rate worth the name
        return None
    return (last - first) / (ordered[last] - ordered[first])


class Drive(typing.NamedTuple):
    """What one driven run of dendrites saw: each request's latency, the status codes counted, the run's wall time,
    and when each request was answered (`time.monotonic()`, one clock for every process on the host)."""

    latencies: list[float]
    codes: dict[str, int]
    elapsed: float
    ends: list[float]
    # (CPU seconds, wall seconds) of each calling process over its timed requests: a caller near one core a second
    # is the harness's own limit, not the server's
    callers_cpu: list[tuple[float, float]]


def slowed_factory(delay_s: float, level_experts: set[str]) -> Any:
    """Wrap the real experts of the last level so each batch takes `delay_s` longer (a stand-in VLM)."""
    from cascade.experts.registry import build_expert

    def factory(config: ExpertConfig, device: str) -> Any:
        expert = build_expert(config, device)
        if config.name in level_experts:
            inner = expert.predict_batch

            def slow(images: Sequence[Any]) -> Any:
                time.sleep(delay_s)
                return inner(images)

            expert.predict_batch = slow  # type: ignore[method-assign]
        return expert

    return factory


async def _closed_loop(submit: Any, total: int, concurrency: int) -> None:
    """Clients as coroutines on one thread: client threads would compete with the engine for the GIL."""
    indices = iter(range(total))

    async def client() -> None:
        for i in indices:
            await asyncio.wrap_future(submit(i))

    await asyncio.gather(*(client() for _ in range(concurrency)))


def bench_cascade(args: argparse.Namespace) -> Any:
    """The cascade file, model paths resolved, every expert moved to `--device` when given."""
    cascade = load_cascade(args.cascade)
    for expert in cascade.experts():
        if args.device:
            expert.device = args.device
        if getattr(args, "idle_dispatch", False):
            expert.wait_when_idle = False
        max_wait_ms = getattr(args, "max_wait_ms", None)
        if isinstance(max_wait_ms, (int, float)):  # axon-vs-stock's list is split into single values per run
            expert.max_wait_ms = float(max_wait_ms)
        if getattr(args, "worker_process", False):
            expert.worker = "process"
    return cascade


def run_engine(args: argparse.Namespace) -> dict[str, Any]:
    from cascade.engine import Engine
    from cascade.experts.registry import build_expert
    from cascade.process_settings import start_with_process_settings
    from cascade.request import Job

    cascade = bench_cascade(args)
    factory: Any = build_expert
    if args.null_experts:
        batch_ms, image_ms = args.null_device_ms
        factory = functools.partial(null_factory, batch_ms=batch_ms, image_ms=image_ms)
    if args.slow_last_level_s:
        last = cascade.levels[-1]
        for expert in last.experts:
            expert.expected_latency_ms = args.slow_last_level_s * 1000.0
        factory = slowed_factory(args.slow_last_level_s, {e.name for e in last.experts})
        last.exit_margin = 0.5  # never confident: every request that reaches it waits for it
    # The bench's 8 hotkeys stand for one busy validator's traffic: no cap per caller.
    scheduler = SchedulerConfig(cache_size=0 if not args.cache else 4096, max_in_flight=args.max_in_flight,
                                max_in_flight_per_hotkey=100_000, decode_workers=args.decode_workers,
                                gil_switch_interval_ms=args.gil_switch_ms, event_loop=args.event_loop,
                                inline_check_max_bytes=args.inline_check_max_bytes)
    engine = Engine(EngineConfig(cascade=cascade, scheduler=scheduler), expert_factory=factory,
                    worker_factory=factory if args.null_experts else None)
    startup = start_with_process_settings(engine)  # as the miner starts it: --gil-switch-ms, the allocator, the heap
    data = payloads(args.requests, args.image_size, args.distinct)
    arrival: list[float] = [0.0] * len(data)
    done_at: list[float] = [0.0] * len(data)
    deadlines: list[float] = [0.0] * len(data)

    def submit(i: int) -> concurrent.futures.Future[Any]:
        now = time.monotonic()
        arrival[i], deadlines[i] = now, now + args.budget_s
        job = Job(payload=data[i], hotkey=f"hk{i % 8}", arrival_s=now, deadline_s=deadlines[i])
        future = engine.submit(job)
        future.add_done_callback(lambda _f: done_at.__setitem__(i, time.monotonic()))
        return future

    began = time.monotonic()
    try:
        if args.burst:  # everything at once: the deadline stress case
            futures = [submit(i) for i in range(len(data))]
            for future in futures:
                future.result(args.budget_s + 60)
        else:  # closed loop: `concurrency` clients, each sends its next request when answered
            # On the loop the miner's axon would use (axon.event_loop follows scheduler.event_loop's default).
            with asyncio.Runner(loop_factory=functools.partial(new_event_loop, args.event_loop)) as runner:
                runner.run(_closed_loop(submit, len(data), args.concurrency))
        elapsed = max(done_at) - began
        # How busy each worker process was (worker: process): near 1, the GPU side is the limit; well under 1,
        # the requests do not reach it fast enough (the request path in this process is).
        busy = {dict(labels)["replica"]: round(seconds / elapsed, 3)
                for labels, seconds in engine.stats.samples("worker_busy_seconds", "").items()}
        # That share by stage (experts/base.py WORKER_STAGES): a long "wait" is a worker held by its GPU, long host
        # stages one held by its own CPU work.
        stages: dict[str, dict[str, float]] = {}
        for labels, seconds in engine.stats.samples("worker_stage_seconds", "").items():
            named = dict(labels)
            stages.setdefault(named["replica"], {})[named["stage"]] = round(seconds / elapsed, 3)
        held = requests_held(sum(engine.stats.samples("request_latency_seconds", "_sum").values()),
                             {dict(labels)["level"]: seconds
                              for labels, seconds in engine.stats.samples("level_seconds", "_sum").items()}, elapsed)
    finally:
        engine.close()
    latencies = [done_at[i] - arrival[i] for i in range(len(data))]
    late = sum(1 for i in range(len(data)) if done_at[i] > deadlines[i])
    snapshot = engine.stats.snapshot()
    report = {
        "mode": "engine-burst" if args.burst else "engine",
        "experts": "null (no model: the request path alone)" if args.null_experts else "real",
        "null_device_ms": list(args.null_device_ms) if args.null_experts else None,
        "wait_when_idle": sorted({expert.wait_when_idle for expert in cascade.experts()}),
        "worker": "process" if args.worker_process else "thread",
        "cascade": str(args.cascade),
        "requests": len(data),
        "concurrency": "all-at-once" if args.burst else args.concurrency,
        "throughput_rps": len(data) / elapsed,
        "steady_rps": steady_rps(done_at),  # the middle 80% of the answers (steady_rps's docstring says why)
        "latency_ms": {k: v * 1000 for k, v in percentiles(latencies, (50, 95, 99, 100)).items()},
        "late_answers": late,
        "statuses": snapshot["requests"],
        "exits_by_levels_run": snapshot["exits_by_levels_run"],
        "skipped_levels": snapshot["skipped_levels"],
        "batch_size_histogram": snapshot["batch_size_histogram"],
        "mean_batch_size": snapshot["mean_batch_size"],
        # from the miner's side: a worker replica's batch includes its wait behind the batch running before it
        "mean_batch_ms": {k: round(1000 * v.total / v.n, 2) for k, v in engine.stats.batch_seconds.items() if v.n},
        "worker_busy_fraction": busy,
        "worker_stage_fraction": stages,
        "requests_held": held,
        # the kernel's cap on a worker socket's buffer (cascade/experts/worker.py asks for 16 MB)
        "net_core_wmem_max": _read_int("/proc/sys/net/core/wmem_max") if args.worker_process else None,
        "cold_start_s": startup.total_s,
        "max_in_flight": engine.admission.max_in_flight,  # what was admitted at once (resolved from the replicas)
        "gil_switch_interval_ms": args.gil_switch_ms,
        "event_loop": args.event_loop,
        "inline_check_max_bytes": args.inline_check_max_bytes,
        "decode_ms_per_image": bench_models.decode_cost_ms(data[: min(50, len(data))]),
    }
    return report


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


async def _drive_axon(process: Any, wallets: Sequence[Any], data: list[str], concurrency: int, timeout_s: float,
                      sequential: bool, sources: int = 0,
                      first_source: int = 0) -> Drive:
    import aiohttp

    from sn72_tools.client import axon_info, make_dendrite, query

    # One dendrite per concurrent caller, each with one request in flight: the axon refuses a nonce older than
    # the last one of a dendrite's uuid, which concurrent requests of one dendrite can be when they arrive out of
    # order (a 401 that validators, one request per miner at a time, never see).
    slots = 1 if sequential else concurrency
    # With sources, the dendrite must not think it is the axon's own host (it would send to 0.0.0.0, which no other
    # loopback address reaches): a documentation address (TEST-NET-1) as its own.
    dendrites = [make_dendrite(wallets[i % len(wallets)], "192.0.2.1" if sources else "127.0.0.1")
                 for i in range(slots)]
    for i, dendrite in enumerate(dendrites):
        if sources:  # each from its own loopback address, as validators come from theirs (one front each)
            source = first_source + i % sources
            address = f"127.0.{source // 250}.{2 + source % 250}"
            dendrite._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))
    idle: asyncio.Queue[Any] = asyncio.Queue()
    for dendrite in dendrites:
        idle.put_nowait(dendrite)
    axon = axon_info("127.0.0.1", process.port, process.hotkey)
    latencies: list[float] = []
    ends: list[float] = []
    codes: dict[str, int] = {}

    async def one(i: int) -> None:
        dendrite = await idle.get()
        try:
            outcome = await query(dendrite, axon, data[i], timeout_s)
        finally:
            idle.put_nowait(dendrite)
        ends.append(time.monotonic())
        latencies.append(outcome.latency_s)
        codes[str(outcome.status_code)] = codes.get(str(outcome.status_code), 0) + 1

    began, cpu_began = time.monotonic(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(len(data))))
    elapsed, cpu_s = time.monotonic() - began, time.process_time() - cpu_began
    for dendrite in dendrites:
        await dendrite.aclose_session()
    return Drive(latencies, codes, elapsed, ends, [(cpu_s, elapsed)])


def _drive_from_processes(process: Any, wallet_path: Path, wallets: int, data: list[str], concurrency: int,
                          timeout_s: float, sources: int, clients: int,
                          on_start: typing.Callable[[], None] | None = None) -> Drive:
    """`_drive_axon` split over `clients` processes (one Python client tops out near the fronts' rate), started
    together after each has warmed up; their latencies and codes merged, the elapsed time from the first start to
    the last end. `on_start` runs here as they start (after their warm-up requests)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    # Two barriers, this process at both: the warm-ups are over (all wait at `warm`), then `on_start` has run (all
    # wait at `go`). With one, the clients' first timed requests raced `on_start`'s read of the miner's counters, and
    # a few of them were counted as before the run (the suite once saw 22 of 24 requests in the run's batches).
    barriers = (context.Barrier(clients + 1), context.Barrier(clients + 1))
    results = context.Queue()
    workers = []
    for k in range(clients):
        share = data[k::clients]
        names = [f"validator{i}" for i in range(wallets)]
        job = (process.port, process.hotkey, str(wallet_path), names, share, max(1, concurrency // clients), timeout_s,
               max(1, sources // clients) if sources else 0, k * max(1, sources // clients) if sources else 0)
        worker = context.Process(target=_client_process, args=(job, barriers, results), daemon=True)
        worker.start()
        workers.append(worker)
    warm, go = barriers
    warm.wait(timeout=600)
    if on_start is not None:
        on_start()
    go.wait(timeout=600)
    done = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(30)
    codes: dict[str, int] = {}
    for _, _, part in done:
        for code, count in part.codes.items():
            codes[code] = codes.get(code, 0) + count
    return Drive([latency for _, _, part in done for latency in part.latencies], codes,
                 max(end for _, end, _ in done) - min(began for began, _, _ in done),
                 [end for _, _, part in done for end in part.ends],
                 [pair for _, _, part in done for pair in part.callers_cpu])


def _client_process(job: tuple[Any, ...], barriers: Any, results: Any) -> None:
    """One client process of `_drive_from_processes`."""
    from types import SimpleNamespace

    from sn72_lab.offline import ensure_wallet

    port, hotkey, wallet_path, names, data, concurrency, timeout_s, sources, first_source = job
    wallets = [ensure_wallet(Path(wallet_path), name) for name in names]
    target = SimpleNamespace(port=port, hotkey=hotkey)
    asyncio.run(_drive_axon(target, wallets, data[: len(wallets)], len(wallets), timeout_s, False, sources,
                            first_source))
    warm, go = barriers
    warm.wait()
    go.wait()  # once the parent has read the miner's counters as they stand before the timed requests
    began = time.monotonic()
    drive = asyncio.run(_drive_axon(target, wallets, data, concurrency, timeout_s, False, sources, first_source))
    results.put((began, began + drive.elapsed, drive))
    # bittensor logs through a multiprocessing queue that a thread of its own reads, stopped by an atexit handler. A
    # multiprocessing child runs no atexit handlers but closes its queues as it ends, so that thread died of EOFError
    # with a traceback on stderr in every client process of every run. The result is flushed, then the process ends
    # without the finalizers (nothing else of it needs them).
    results.close()
    results.join_thread()
    os._exit(0)


def run_axon(args: argparse.Namespace, header_cache: bool = True, sequential: bool = False,
             stock: bool | None = None) -> dict[str, Any]:
    """Through a real axon: the miner, or bittensor's stock axon (`stock`, else `--stock`). The run's wallets,
    configs and metagraph live in a temporary folder removed afterwards (a lease's dozens of runs left one each)."""
    stock = getattr(args, "stock", False) if stock is None else stock
    with tempfile.TemporaryDirectory(prefix="sn72-bench-") as folder:
        return _run_axon_in(Path(folder), args, header_cache, sequential, stock)


def _effective_axon_settings(axon: dict[str, Any]) -> dict[str, Any]:
    """The miner's front processes, dispatch and HTTP request slots as the run had them, defaults resolved the way
    the miner resolves them on this machine (its CPU count), and which of them were left to their defaults: a run
    recorded as "default" could not say what it ran with once the defaults moved (the request slots did)."""
    from neurons.config import AxonConfig, front_processes, request_slots

    config = AxonConfig.model_validate(axon)
    fronts = front_processes(config)
    return {"processes": fronts, "dispatch": config.dispatch,
            "max_concurrent_requests": request_slots(config, fronts),
            "defaulted": [name for name in ("processes", "dispatch", "max_concurrent_requests") if name not in axon]}


def _run_axon_in(folder: Path, args: argparse.Namespace, header_cache: bool, sequential: bool,
                 stock: bool) -> dict[str, Any]:
    from sn72_lab.loadtest import scrape, settled
    from sn72_lab.offline import ensure_wallet, run_miner, write_offline_metagraph
    from sn72_lab.process_cpu import cpu_by_role, cpu_ms_per_request

    miner = ensure_wallet(folder / "wallets", "miner")
    wallets = [ensure_wallet(folder / "wallets", f"validator{i}") for i in range(args.wallets)]
    write_offline_metagraph(folder / "metagraph.json", 72, miner.hotkey.ss58_address,
                            {w.hotkey.ss58_address: 1000.0 * (i + 1) for i, w in enumerate(wallets)})
    cascade = bench_cascade(args).model_dump(mode="json")
    # Every simulated validator sends from 127.0.0.1: lift the per-address share of request slots
    # (neurons/request_slots.py), as validators' distinct addresses would have.
    processes = getattr(args, "processes", None)
    dispatch = getattr(args, "dispatch", None)
    http_slots = getattr(args, "max_concurrent_requests", None)
    if isinstance(http_slots, list):  # axon-vs-stock's list is split into single values per run
        http_slots = None
    axon: dict[str, Any] = {"cache_header_schema": header_cache, "event_loop": args.event_loop,
                            "max_concurrent_requests_per_ip": 100_000,
                            **({"max_concurrent_requests": http_slots} if http_slots is not None else {}),
                            **({"processes": processes} if processes is not None else {}),
                            **({"dispatch": dispatch} if dispatch is not None else {})}
    extra = {"axon": axon,
             "guards": {"rate_per_s": 0.0},
             "scheduler": {"cache_size": 0, "decode_workers": args.decode_workers, "event_loop": args.event_loop,
                           **({"gil_switch_interval_ms": args.gil_switch_ms} if args.gil_switch_ms else {})},
             "log_level": "WARNING"}
    data = payloads(args.requests, args.image_size, args.distinct)
    server = (run_stock_axon(folder / "wallets", miner, args.stock_hotkey_once) if stock
              else run_miner(folder, folder / "wallets", miner, cascade, extra=extra))
    clients = 1 if sequential else max(1, getattr(args, "client_processes", 1))
    with server as process:
        sources = args.concurrency if args.sources is None else args.sources
        metrics_before: dict[str, float] = {}
        cpu_before: dict[int, tuple[str, float]] = {}

        def read_metrics_before() -> None:
            """The server's CPU and the miner's counters (none on the stock axon) as the timed requests start, after
            the warm-ups (read before them, the CPU of the warm-ups and of the first requests' start-up work was
            counted against the timed requests: an outside tester saw 10 ms a request at 300 requests)."""
            cpu_before.update(cpu_by_role(process.process.pid))
            if not stock:
                metrics_before.update(scrape(process.metrics_port))

        if clients > 1:
            drive = _drive_from_processes(process, folder / "wallets", len(wallets), data, args.concurrency,
                                          args.timeout_s, sources, clients, read_metrics_before)
        else:
            # one warm-up round trip per wallet (dendrite sessions, first-request paths)
            asyncio.run(_drive_axon(process, wallets, data[: len(wallets)], len(wallets), args.timeout_s, False,
                                    sources))
            read_metrics_before()
            drive = asyncio.run(
                _drive_axon(process, wallets, data, args.concurrency, args.timeout_s, sequential, sources))
        cpu_ms = cpu_ms_per_request(cpu_before, cpu_by_role(process.process.pid), len(data))
        # The miner's own late counters (answers after the caller's deadline) and its engine's side of the run, as
        # its metrics endpoint has them once every accepted request is over; the stock axon keeps neither.
        metrics_after = None if stock else settled(process.metrics_port, timeout_s=15.0)
    late = None if metrics_after is None else _late_counts(metrics_after)
    engine_side = None if metrics_after is None else _engine_side(metrics_after, metrics_before, drive.elapsed)
    held = None if metrics_after is None else requests_held(
        sum(bench_traffic.delta(metrics_after, metrics_before, "sn72_miner_request_latency_seconds_sum",
                                "status").values()),
        bench_traffic.delta(metrics_after, metrics_before, "sn72_miner_level_seconds_sum", "level"), drive.elapsed)
    return {
        "mode": ("stock-axon" if stock else "axon") + ("-sequential" if sequential else ""),
        "header_cache": header_cache,
        "worker": "process" if getattr(args, "worker_process", False) else "thread",
        "event_loop": "asyncio" if stock else args.event_loop,
        **({} if stock else {**_effective_axon_settings(axon),
                             "max_wait_ms": sorted({expert["max_wait_ms"] for level in cascade["levels"]
                                                    for expert in level["experts"]})}),
        "cascade": str(args.cascade),
        "decode_workers": args.decode_workers,
        "idle_dispatch": bool(getattr(args, "idle_dispatch", False)),
        **({"stock_hotkey": "once" if args.stock_hotkey_once else "per access"} if stock else {}),
        "requests": len(data),
        "wallets": len(wallets),
        "concurrency": 1 if sequential else args.concurrency,
        "client_processes": clients,
        "throughput_rps": len(data) / drive.elapsed,
        "steady_rps": steady_rps(drive.ends),  # the middle 80% of the answers (steady_rps's docstring says why)
        "latency_ms": {k: v * 1000 for k, v in percentiles(drive.latencies, (50, 95, 99, 100)).items()},
        "status_codes": drive.codes,
        # Where the CPU went over the timed requests: "server" is the miner process (or the stock axon), "fronts" its
        # front processes, "worker" its expert workers, "decode" its isolated decoders.
        "cpu_ms_per_request": cpu_ms,
        # The calling side (the dendrites' processes): CPU a request, and each process's CPU over its wall time
        "callers": {"cpu_ms_per_request": round(1000 * sum(cpu for cpu, _ in drive.callers_cpu) / max(1, len(data)),
                                                3),
                    "busy_fraction": [round(cpu / wall, 3) if wall > 0 else None for cpu, wall in drive.callers_cpu]},
        **({} if late is None else {"late": late}),
        **({} if engine_side is None else {"engine_side": engine_side}),
        **({} if held is None else {"requests_held": held}),
    }


def requests_held(answered_s: float, level_s: dict[str, float], elapsed_s: float) -> dict[str, Any]:
    """How many requests the miner held on average over a run (Little's law: the seconds its answers took, summed,
    over the run's wall time), and how many of those were in each level (queued for a batch or in one; levels keyed
    from 1). Beside the callers' concurrency this says where a closed loop's requests were: a miner holding fewer than
    the callers keep in flight leaves the rest with them or on the wire, and a level holding few makes small batches."""
    if elapsed_s <= 0:
        return {}
    in_level = {str(int(level) + 1): round(seconds / elapsed_s, 1) for level, seconds in sorted(level_s.items())}
    return {"in_miner": round(answered_s / elapsed_s, 1), "in_level": in_level}


def _engine_side(after: dict[str, float], before: dict[str, float], elapsed_s: float) -> dict[str, dict[str, Any]]:
    """Per replica, over the timed requests: its batches, their mean size and time (from the miner's side: a batch's
    wait behind the one before it included, as `engine`'s `mean_batch_ms`), and how busy its worker process was
    (`worker: process` only; the seconds it spent on answered batches over the run's wall time) and that share by
    stage (experts/base.py WORKER_STAGES). With the engine's own run in the same lease these say where the miner's
    rate through the axon is lost: a worker busy as in the engine's run with smaller batches, or a worker left
    waiting (the requests reach it too slowly); and whether a busy worker is held by its GPU or its own host work."""
    delta = bench_traffic.delta
    sizes = delta(after, before, "sn72_miner_batch_size_sum", "replica")
    batches = delta(after, before, "sn72_miner_batch_size_count", "replica")
    seconds = delta(after, before, "sn72_miner_batch_seconds_sum", "replica")
    busy = delta(after, before, "sn72_miner_worker_busy_seconds", "replica")
    stages: dict[str, dict[str, float]] = {}
    grown = delta(after, before, "sn72_miner_worker_stage_seconds", "replica", "stage")
    for replica, stage in sorted(grown, key=lambda pair: (pair[0], WORKER_STAGES.index(pair[1]))):  # the worker's order
        stages.setdefault(replica, {})[stage] = grown[replica, stage]
    side: dict[str, dict[str, Any]] = {}
    for replica, count in batches.items():
        if not count:
            continue
        side[replica] = {"batches": count, "mean_batch_size": round(sizes[replica] / count, 2),
                         "mean_batch_ms": round(1000 * seconds.get(replica, 0.0) / count, 2)}
        if replica in busy and elapsed_s > 0:
            side[replica]["worker_busy_fraction"] = round(busy[replica] / elapsed_s, 3)
            side[replica]["worker_stage_fraction"] = {stage: round(seconds / elapsed_s, 3)
                                                      for stage, seconds in stages.get(replica, {}).items()}
    return side


def _engine_side_text(side: dict[str, dict[str, Any]]) -> str:
    """`_engine_side` in a progress line: each replica's mean batch and its worker's busy share."""
    return "".join(f"; {replica} batch {figures['mean_batch_size']:.1f}"
                   + (f", busy {figures['worker_busy_fraction']:.2f} ({_stages_text(figures['worker_stage_fraction'])})"
                      if "worker_busy_fraction" in figures else "")
                   for replica, figures in side.items())


def _held_text(held: dict[str, Any] | None) -> str:
    """`requests_held` in a progress line."""
    if not held:
        return ""
    levels = " ".join(f"L{level} {count:.0f}" for level, count in held["in_level"].items())
    return f"; held {held['in_miner']:.0f} ({levels})"


def _callers_text(callers: dict[str, Any]) -> str:
    """The calling processes' busiest share of a core in a progress line (near 1: the harness is the limit)."""
    known = [share for share in callers["busy_fraction"] if share is not None]
    return f"; callers busy {max(known):.2f}" if known else ""


def _stages_text(stages: dict[str, float]) -> str:
    return " ".join(f"{stage} {share:.2f}" for stage, share in stages.items())


def _late_counts(samples: dict[str, float]) -> dict[str, float]:
    key = "sn72_miner_axon_total{{outcome={}}}".format
    outcomes = ("late_answer", "late_other", "late_skipped")
    missing = [key(outcome) for outcome in outcomes if key(outcome) not in samples]
    if missing:  # exported from start-up: an absence means a name changed
        raise RuntimeError(f"the miner's metrics have no {', '.join(missing)}")
    return {outcome: samples[key(outcome)] for outcome in outcomes}


# The miner's settings axon-vs-stock sweeps, with the suffix each gives a run's name: every combination of their
# values runs each round; a run is named by its front processes and by each option given several values.
_SWEPT = (("processes", "-p{}"), ("dispatch", "-{}"), ("max_wait_ms", "-w{:g}"), ("max_concurrent_requests", "-c{}"))


def _miner_runs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each miner run's name and the settings it overrides (None: the miner's own)."""
    values = [[None] if not getattr(args, key) else list(getattr(args, key)) for key, _ in _SWEPT]
    runs: dict[str, dict[str, Any]] = {}
    for combination in itertools.product(*values):
        name = "miner" + "".join(suffix.format(value) for (key, suffix), value, given
                                 in zip(_SWEPT, combination, values, strict=True)
                                 if value is not None and (key == "processes" or len(given) > 1))
        runs[name] = {key: value for (key, _), value in zip(_SWEPT, combination, strict=True)}
    return runs


def run_axon_vs_stock(args: argparse.Namespace) -> dict[str, Any]:
    """The stock axon and the miner alternated `--rounds` times on the same traffic; the ratio of their medians.
    With several `--processes` values, each round runs the miner once per value (front processes, neurons/fronts.py).

    One pair of runs is not enough: on one H200 host two pairs a minute apart gave 112% and 73% (the dendrites run
    on the same host as the servers, and each run is seconds long).
    """
    miners = _miner_runs(args)
    names = ["stock", *miners]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_number in range(1, args.rounds + 1):
        runs["stock"].append(run_axon(argparse.Namespace(**{**vars(args), "dispatch": None}), stock=True))
        for name, settings in miners.items():
            runs[name].append(run_axon(argparse.Namespace(**{**vars(args), **settings}), stock=False))
        # Progress on stderr, and the figures so far survive a run cut short by a time limit: the report of the
        # rounds done is written after each (a GPU lease's command limit once cut the third round and lost the JSON).
        done = ", ".join(f"{name} {runs[name][-1]['throughput_rps']:.0f} req/s "
                         f"(steady {runs[name][-1]['steady_rps'] or float('nan'):.0f}"
                         f"{_engine_side_text(runs[name][-1].get('engine_side', {}))}"
                         f"{_held_text(runs[name][-1].get('requests_held'))}"
                         f"{_callers_text(runs[name][-1]['callers'])})" for name in names)
        print(f"round {round_number}/{args.rounds}: {done}", file=sys.stderr, flush=True)
        if getattr(args, "json", None) and round_number < args.rounds:
            args.json.write_text(json.dumps(_vs_stock_report(args, names, runs), indent=2))
    return _vs_stock_report(args, names, runs)


def _vs_stock_report(args: argparse.Namespace, names: list[str],
                     runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The rounds run so far (`rounds_completed` of `rounds`): per-round figures, medians and ratios of medians."""
    rps = {name: [round(r["throughput_rps"], 1) for r in results] for name, results in runs.items()}
    steady = {name: [None if r["steady_rps"] is None else round(r["steady_rps"], 1) for r in results]
              for name, results in runs.items()}
    p50 = {name: [round(r["latency_ms"]["p50"], 1) for r in results] for name, results in runs.items()}
    medians = {name: statistics.median(values) for name, values in rps.items()}
    report: dict[str, Any] = {
        "mode": "axon-vs-stock",
        "rounds": args.rounds,
        "rounds_completed": len(runs["stock"]),
        "requests_per_run": args.requests,
        "concurrency": args.concurrency,
        "wallets": args.wallets,
        "sources": args.concurrency if args.sources is None else args.sources,
        "client_processes": args.client_processes,
        "worker": "process" if args.worker_process else "thread",
        "stock_hotkey": runs["stock"][0]["stock_hotkey"],
        "stock_rps": rps["stock"],
        "stock_p50_ms": p50["stock"],
        "stock_rps_median": medians["stock"],
    }
    for name in names[1:]:
        report[f"{name}_rps"] = rps[name]
        report[f"{name}_p50_ms"] = p50[name]
        report[f"{name}_over_stock_per_round"] = [round(m / s, 3) for m, s in zip(rps[name], rps["stock"], strict=True)]
        report[f"{name}_rps_median"] = medians[name]
        report[f"{name}_over_stock"] = medians[name] / medians["stock"]
    # The same per round over the middle 80% of each run's answers (`steady_rps`), to set beside the engine's own
    for name in names:
        report[f"{name}_steady_rps"] = steady[name]
        known = [value for value in steady[name] if value is not None]
        report[f"{name}_steady_rps_median"] = statistics.median(known) if known else None
    report["callers"] = {name: [r["callers"] for r in results] for name, results in runs.items()}
    report["max_wait_ms"] = {name: results[0]["max_wait_ms"] for name, results in runs.items() if name != "stock"}
    report["max_concurrent_requests"] = {name: results[0]["max_concurrent_requests"] for name, results in runs.items()
                                         if name != "stock"}
    report["settings"] = {name: {key: results[0][key] for key in ("processes", "dispatch", "defaulted")}
                          for name, results in runs.items() if name != "stock"}
    report["cascade"], report["decode_workers"] = str(args.cascade), args.decode_workers
    report["idle_dispatch"] = bool(getattr(args, "idle_dispatch", False))
    report["cpu_ms_per_request"] = {name: [r["cpu_ms_per_request"] for r in results] for name, results in runs.items()}
    report["late"] = {name: [r["late"] for r in results] for name, results in runs.items() if name != "stock"}
    # The engine's side of each miner run (`_engine_side`): batches, their size and time, the worker's busy share
    report["engine_side"] = {name: [r["engine_side"] for r in results] for name, results in runs.items()
                             if name != "stock"}
    # How many requests each miner run held on average, in all and in each level (`requests_held`)
    report["requests_held"] = {name: [r["requests_held"] for r in results] for name, results in runs.items()
                               if name != "stock"}
    report["status_codes"] = {name: [r["status_codes"] for r in results] for name, results in runs.items()}
    return report


@contextlib.contextmanager
def run_stock_axon(wallet_path: Path, miner: Any, hotkey_once: bool = False) -> Iterator[Any]:
    """bittensor's stock axon with a trivial forward, in its own process, as the miner runs in its own.

    `hotkey_once`: the stock axon unlocks its hotkey at start-up as the miner does (bittensor as shipped re-reads the
    key file on every access, twice per request), so the miner is measured against a reference without that cost.
    """
    from neurons.miner import READY_LINE
    from sn72_lab.offline import MinerProcess, free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sn72_lab.stock_axon", "--wallet.path", str(wallet_path), "--wallet.name", miner.name,
         "--port", str(port), *(["--hotkey-once"] if hotkey_once else [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(READY_LINE):
            break
    else:
        raise RuntimeError("the stock axon did not start")
    try:
        yield MinerProcess(process, port, 0, miner.hotkey.ss58_address, wallet_path)
    finally:
        process.terminate()
        process.wait(30)


def run_roundtrip(args: argparse.Namespace) -> dict[str, Any]:
    """Sequential round trips, stock per-response schema rebuild vs cached, alternated to cancel drift.

    `--stock`: each round also times bittensor's stock axon (trivial forward; `--stock-hotkey-once` as elsewhere),
    the floor of the dendrite's and the axon's own path, so what the miner adds to a round trip beyond its engine
    can be read beside it.
    """
    args.wallets = 1
    # Each side: (header cache, stock axon, dispatch). `--dispatch A B`: the miner once per dispatch (header cache on,
    # as served) instead of once per header-cache setting.
    sides: dict[str, tuple[bool, bool, str | None]] = (
        {f"dispatch_{d}": (True, False, d) for d in args.dispatch} if args.dispatch
        else {"without_header_cache": (False, False, None), "with_header_cache": (True, False, None)})
    if args.stock:
        sides["stock_axon"] = (True, True, None)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, (header_cache, stock, dispatch) in sides.items():
            runs[name].append(run_axon(argparse.Namespace(**{**vars(args), "dispatch": dispatch}),
                                       header_cache=header_cache, sequential=True, stock=stock))
    report: dict[str, Any] = {"mode": "roundtrip", "requests_per_run": args.requests, "rounds": args.rounds,
                              "cascade": str(args.cascade)}
    report["settings"] = {name: {key: results[0][key] for key in ("processes", "dispatch", "max_concurrent_requests",
                                                                  "defaulted")}
                          for name, results in runs.items() if name != "stock_axon"}
    if args.stock:
        report["stock_hotkey"] = runs["stock_axon"][0]["stock_hotkey"]
    for name, results in runs.items():
        report[name] = {
            f"{point}_ms_round{i + 1}": r["latency_ms"][point]
            for i, r in enumerate(results)
            for point in ("p50", "p99")
        }
        report[name]["p50_ms_median"] = statistics.median(r["latency_ms"]["p50"] for r in results)
        report[name]["p99_ms_median"] = statistics.median(r["latency_ms"]["p99"] for r in results)
    return report


def print_table(report: dict[str, Any], indent: str = "") -> None:
    for key, value in report.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            print(f"{indent}{key}:")
            print_table(value, indent + "  ")
        elif isinstance(value, dict):
            inner = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
            print(f"{indent}{key:<24} {inner}")
        else:
            print(f"{indent}{key:<24} {value:.2f}" if isinstance(value, float) else f"{indent}{key:<24} {value}")


def size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("engine", "axon", "roundtrip", "axon-vs-stock"):
        p = sub.add_parser(name)
        p.add_argument("--cascade", type=Path, required=True)
        p.add_argument("--requests", type=int, default=200)
        p.add_argument("--concurrency", type=int, default=16)
        p.add_argument("--image-size", type=size, default=(640, 480), help="WxH of generated images")
        p.add_argument("--distinct", type=int, default=None, help="distinct images (default: all)")
        p.add_argument("--device", default=None, help="override every expert's device")
        p.add_argument("--json", type=Path)
        p.add_argument("--decode-workers", type=int, default=2)
        p.add_argument("--event-loop", choices=typing.get_args(EventLoopKind), default="uvloop",
                       help="the miner's event loops (engine and HTTP server); the stock axon keeps bittensor's")
        p.add_argument("--idle-dispatch", action="store_true",
                       help="every expert's wait_when_idle off (the default unless the cascade file sets it): an idle "
                       "replica starts at once")
        p.add_argument("--worker-process", action="store_true",
                       help="every expert in a worker process of its own (worker: process)")
        p.add_argument("--max-wait-ms", type=float, nargs="+" if name == "axon-vs-stock" else None, default=None,
                       help="every expert's max_wait_ms (how long a batch waits to fill while one runs; default: the "
                       "cascade file's); axon-vs-stock: several values, each run every round")
        if name == "engine":
            p.add_argument("--burst", action="store_true", help="submit everything at once")
            p.add_argument("--budget-s", type=float, default=8.4, help="deadline per request (9 s - margin)")
            p.add_argument("--slow-last-level-s", type=float, default=0.0)
            p.add_argument("--null-experts", action="store_true",
                           help="experts that cost nothing: the request path's own ceiling")
            p.add_argument("--null-device-ms", type=float, nargs=2, default=(0.0, 0.0), metavar=("BATCH", "IMAGE"),
                           help="with --null-experts: each batch takes BATCH + IMAGE x its size ms off the CPU "
                           "(a stand-in GPU; ViT-B/16 with nvJPEG on an H200 was ~0.5 ms an image)")
            p.add_argument("--max-in-flight", type=int, default=None,
                           help="requests admitted at once (default: the scheduler's, 256 per first-level replica)")
            p.add_argument("--cache", action="store_true", help="keep the result cache on")
            p.add_argument("--gil-switch-ms", type=float, default=0.5, help="sys.setswitchinterval in ms")
            p.add_argument("--inline-check-max-bytes", type=int, default=1 << 20,
                           help="scheduler.inline_check_max_bytes (0: every payload through the decode pool)")
        else:
            p.add_argument("--wallets", type=int, default=4)
            p.add_argument("--rounds", type=int, default=2 if name == "roundtrip" else 3,
                           help="roundtrip, axon-vs-stock: alternating runs per setting")
            p.add_argument("--timeout-s", type=float, default=9.0)
            p.add_argument("--gil-switch-ms", type=float, default=None,
                           help="the miner's scheduler.gil_switch_interval_ms (default: the miner's own)")
            p.add_argument("--processes", type=int, nargs="+" if name == "axon-vs-stock" else None, default=None,
                           help="the miner's axon.processes (front processes; default: the miner's own); "
                           "axon-vs-stock: several values, each run every round")
            several = name in ("axon-vs-stock", "roundtrip")
            p.add_argument("--dispatch", choices=("direct", "fastapi"), nargs="+" if several else None, default=None,
                           help="the miner's axon.dispatch (default: the miner's own); axon-vs-stock, "
                           "roundtrip: several values, each run every round (for each --processes value)")
            p.add_argument("--max-concurrent-requests", type=int, nargs="+" if name == "axon-vs-stock" else None,
                           default=None,
                           help="the miner's axon.max_concurrent_requests (its HTTP request slots, all fronts "
                           "together; default: the miner's own); axon-vs-stock: several values, each run every round")
            p.add_argument("--client-processes", type=int, default=1,
                           help="axon, axon-vs-stock: the dendrites split over this many client processes (one "
                           "Python client process tops out near a thousand or two requests a second)")
            p.add_argument("--sources", type=int, default=None,
                           help="loopback addresses the dendrites send from, as distinct validators (default: one "
                           "per concurrent dendrite; 0: all from 127.0.0.1)")
            p.add_argument("--stock", action="store_true",
                           help="axon: bittensor's stock axon, trivial forward, instead of the miner (reference); "
                           "roundtrip: the stock axon's round trip too, each round")
            p.add_argument("--stock-hotkey-once", action="store_true",
                           help="the stock axon reads its hotkey once, as the miner does (as shipped it re-reads "
                           "the key file twice per request): the stricter reference")
    bench_models.add_parsers(sub)
    bench_levels.add_parser(sub)
    bench_stages.add_parser(sub)
    bench_traffic.add_parser(sub)
    sub.add_parser("report", help="markdown tables of a levels/traffic run's JSON").add_argument(
        "out", type=Path, help="folder holding levels.json and/or traffic.json")
    args = parser.parse_args(argv)
    if args.mode == "report":
        return bench_report.main([str(args.out)])
    runners = {"engine": run_engine, "axon": run_axon, "roundtrip": run_roundtrip, "axon-vs-stock": run_axon_vs_stock,
               "levels": bench_levels.run_levels, "stages": bench_stages.run_stages,
               "traffic": bench_traffic.run_traffic}
    from cascade.experts.base import ExpertError
    from cascade.placement import PlacementError

    try:
        report = runners[args.mode](args) if args.mode in runners else bench_models.run(args)
    except (ExpertError, PlacementError) as exc:  # a model folder not built yet, a cascade that does not fit
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tables = {"levels": bench_report.levels_table, "traffic": bench_report.traffic_table}
    if args.mode in tables:
        print(tables[args.mode](report))
    else:
        print_table(report)
    if getattr(args, "json", None):
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
