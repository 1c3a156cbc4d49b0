"""Entry point: `python -m neurons.miner --config config/miner.yaml [overrides]`.

Starts the engine (models placed, loaded and warmed), then a bittensor 10.5 axon serving
`ImageSynapse` and `ExtendedImageSynapse` behind the HTTP guard (neurons/http_guard.py). Forward
never blocks uvicorn's loop: the engine works on its own threads and answers every job before its
deadline by itself; the handler only waits for that answer. SIGTERM or SIGINT closes the listener,
lets every accepted request finish (drain), then exits.

No `from __future__ import annotations` here: `Axon.attach` inspects real annotation classes.
"""
# ruff: noqa: E402 - the offline switches below must be set before anything imports ultralytics,
# transformers or huggingface_hub.

import os

# The miner never installs or downloads anything at run time (models are fetched beforehand with
# sn72-download-models). Without these, ultralytics answers an unreadable image by trying to
# pip-install a HEIF plugin and resolving public DNS names, in the middle of a request.
for _name, _value in (("YOLO_OFFLINE", "1"), ("YOLO_AUTOINSTALL", "false"), ("HF_HUB_OFFLINE", "1"),
                      ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ[_name] = _value

import signal
import sys
import threading
import time
import typing
from collections.abc import Callable
from typing import Any

from loguru import logger

from cascade.config import EngineConfig
from neurons.axon_hardening import header_safe
from neurons.chain import MetagraphSource, publish_axon
from neurons.config import ConfigError, MinerConfig, front_processes, load_config, request_slots
from neurons.deadlines import client_deadline, sane_timeout, sent_before_arrival_s
from neurons.guards import GuardPolicy, blacklist, priority
from neurons.http_guard import CLIENT_GONE, CURRENT, HttpLimits, RequestState, raise_fd_limit
from neurons.logs import configured as logs_configured
from neurons.logs import quiet_progress_bars
from neurons.outcomes import AxonOutcomes, quiet_bittensor_request_logs
from neurons.protocol import ExtendedImageSynapse, ImageSynapse
from neurons.reload import RESTART_EXIT_CODE, Reloader

READY_LINE = "MINER READY"  # printed once the axon serves; scripts and tests wait for it
# Before the listener is bound: a request signed earlier was meant for a previous process, whose record of used
# nonces is gone, so it is refused rather than replayable here (neurons/nonces.py).
_STARTED_NS = time.time_ns()


class Miner:
    """The axon's handlers: guards, verification, forward. What must hold across every front process (nonce claims,
    rate limits, the engine) is asked of `core` (neurons/serving_core.py): by a call in the miner process, or over
    the link from a front process (neurons/front.py)."""

    def __init__(self, config: MinerConfig, engine: Any, metagraph: MetagraphSource,
                 outcomes: AxonOutcomes | None = None, core: Any = None, started_ns: int | None = None) -> None:
        from neurons.nonces import NonceRecord
        from neurons.serving_core import ServingCore

        started_ns = _STARTED_NS if started_ns is None else started_ns  # read now: the tests set the module's
        self.config = config
        self.metagraph = metagraph
        self.policy = GuardPolicy(
            allow_non_validators=config.guards.allow_non_validators,
            min_stake=config.guards.min_stake,
            allowed_hotkeys=frozenset(config.guards.allowed_hotkeys),
            denied_hotkeys=frozenset(config.guards.denied_hotkeys),
        )
        self.core = core if core is not None else ServingCore(
            config, engine, outcomes or AxonOutcomes(summary_interval_s=config.summary_interval_s), started_ns)
        self.outcomes = self.core.outcomes
        limits = config.axon
        # The nonce checks that need no record, made here before the signature (the record is the core's).
        self._window = NonceRecord(limits.nonce_max_age_s, limits.nonce_future_s, limits.nonce_record_size,
                                   not_before_ns=started_ns)
        self.in_flight = 0
        self._axon: Any = None
        self._verifier: Any = None
        ImageSynapse.cache_required_fields = config.axon.cache_header_schema

    @property
    def engine(self) -> Any:
        return self.core.engine

    @property
    def response_lag(self) -> Any:
        return self.core.response_lag

    # -- blacklist (before the signature is checked: changes no per-hotkey state) ------------------
    def _blacklist(self, synapse: Any) -> tuple[bool, str]:
        hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else None
        verdict = blacklist(hotkey, self.metagraph.snapshot, self.policy)
        if verdict.refused:
            self.outcomes.add(f"refused_{verdict.code}")
        return verdict.refused, verdict.reason

    # -- verification, then the per-hotkey rate limit ---------------------------------------------
    async def _verify(self, synapse: Any) -> None:
        """The signature and nonce check (axon_hardening.strict_verifier, claiming in the core), the unsigned timeout
        capped first for the deadline; the core charges the caller's bucket with the claim."""
        synapse.timeout = sane_timeout(synapse.timeout, self.config.deadline.timeout_cap_s)
        try:
            rate_limited = await self._verifier(synapse)
        except Exception:
            self.outcomes.add("refused_unverified")
            raise  # the axon answers 401
        state = CURRENT.get()
        hotkey = synapse.dendrite.hotkey
        if state is not None:
            state.hotkey = hotkey
            trust_s = self.config.deadline.nonce_trust_s
            before_s = sent_before_arrival_s(synapse.dendrite.nonce, state.arrival_s, trust_s)
            state.client_deadline_s = client_deadline(state.arrival_s, float(synapse.timeout), before_s)
            state.rate_limited = rate_limited

    # -- forward --------------------------------------------------------------------------------
    async def _forward(self, synapse: ImageSynapse) -> ImageSynapse:
        state = CURRENT.get() or RequestState(arrival_s=time.monotonic(), path="")
        if isinstance(synapse, ExtendedImageSynapse):
            synapse.model_url = self.config.natix.model_url
        try:
            if state.rate_limited:
                self.outcomes.add("refused_rate_limit")
                return self._reject(synapse, 429, "rate limit exceeded")
            client_deadline_s = state.client_deadline_s or state.arrival_s + self.config.deadline.timeout_cap_s
            testnet_label = synapse.testnet_label if synapse.testnet_label in (0, 1) else -1
            self.in_flight += 1
            try:
                reply = await self.core.answer(synapse.image or "", state.hotkey or "",
                                               priority(state.hotkey, self.metagraph.snapshot), state.arrival_s,
                                               client_deadline_s, testnet_label)
            finally:
                self.in_flight -= 1
                state.answered_s = time.monotonic()
            if reply is None:
                self.outcomes.add("answered_miner_timeout")
                synapse.prediction = self.core.prior
                return synapse
            state.outcome = reply.outcome
            if reply.status != 200:
                return self._reject(synapse, reply.status, reply.message)
            synapse.prediction = reply.prediction
            return synapse
        finally:
            synapse.image = ""  # never carry the image back to the caller
            header_safe(synapse)  # and nothing its headers cannot carry

    @staticmethod
    def _reject(synapse: ImageSynapse, status: int, message: str) -> ImageSynapse:
        """A clear error for the caller: the axon sends the status code and message as given."""
        import bittensor as bt

        synapse.prediction = -1.0  # whatever the caller preset (NaN would not even serialise)
        if synapse.axon is None:
            synapse.axon = bt.TerminalInfo()
        synapse.axon.status_code = status
        synapse.axon.status_message = message
        return synapse

    # -- HTTP-layer events ----------------------------------------------------------------------
    def on_response(self, state: RequestState) -> None:
        """Every request once, when it is over: the core counts it (late ones too) and learns the response lag."""
        self.core.on_response(state)

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, axon: Any) -> None:
        """Serve both routes with the exact handler signatures `Axon.attach` checks; guard the ping route too."""
        import bittensor as bt

        from neurons.axon_hardening import harden, strict_verifier

        self._axon = axon
        # The record the claims go to where it is in this process (the tools read its size there).
        harden(axon, getattr(self.core, "nonces", self._window))
        # Read once: the key file is not re-read per request (docs/performance.md), and the miner's hotkey is fixed.
        self._verifier = strict_verifier(axon.wallet.hotkey.ss58_address, self._window, self.core.admit)
        for cls in (ImageSynapse, ExtendedImageSynapse):
            forward, blacklist_fn, verify_fn = self.handlers(cls)
            axon.attach(forward_fn=forward, blacklist_fn=blacklist_fn, verify_fn=verify_fn)
        # bittensor's `/Synapse` ping route had no blacklist (strangers got 200): the same guards as the rest.
        _, blacklist_fn, verify_fn = self.handlers(bt.Synapse)

        async def ping(synapse: bt.Synapse) -> bt.Synapse:
            return header_safe(synapse)

        axon.attach(forward_fn=ping, blacklist_fn=blacklist_fn, verify_fn=verify_fn)

    def handlers(self, cls: type) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        async def forward(synapse):  # type: ignore[no-untyped-def]
            return await self._forward(synapse)

        async def blacklist_fn(synapse):  # type: ignore[no-untyped-def]
            return self._blacklist(synapse)

        async def verify_fn(synapse):  # type: ignore[no-untyped-def]
            await self._verify(synapse)

        forward.__annotations__ = {"synapse": cls, "return": cls}
        blacklist_fn.__annotations__ = {"synapse": cls, "return": typing.Tuple[bool, str]}  # noqa: UP006
        verify_fn.__annotations__ = {"synapse": cls, "return": None}
        return forward, blacklist_fn, verify_fn


def build_observers(engine_config: EngineConfig) -> list[Any]:
    observers: list[Any] = []
    if engine_config.active_learning.enabled:
        from cascade.observers.active_learning import ActiveLearningObserver

        observers.append(ActiveLearningObserver(engine_config.active_learning))
    return observers


def http_limits(config: MinerConfig) -> HttpLimits:
    axon = config.axon
    return HttpLimits(axon.max_request_bytes, axon.header_timeout_s, axon.body_timeout_s, axon.max_connections,
                      axon.max_connections_per_ip, request_slots(axon, front_processes(axon)),
                      config.deadline.timeout_cap_s,
                      config.deadline.nonce_trust_s, axon.max_concurrent_requests_per_ip,
                      max_header_bytes=axon.max_header_bytes)


def listen(config: MinerConfig, outcomes: AxonOutcomes, sock: Any = None) -> Any:
    """The axon's HTTP server, serving on `sock` (bound by start-up) from now on: until `serve` hands it the axon,
    every request is refused at once, 503 with the reason, counted as `refused_not_ready`."""
    from cascade.event_loop import uvicorn_loop
    from neurons.server import AxonServer

    def count(state: RequestState) -> None:
        outcome = state.violation[2] if state.violation else "closed_client_gone" if state.status == CLIENT_GONE \
            else f"error_{state.status}"
        outcomes.add(outcome)

    limits = http_limits(config)
    server = AxonServer(limits, config.axon.keep_alive_s, config.axon.max_header_bytes,
                        config.drain_timeout_s, lambda reason: outcomes.add(f"closed_{reason}"), count,
                        config.axon.host, config.axon.port, uvicorn_loop(config.axon.event_loop), sock).start()
    outcomes.track_http(server.guard, limits.max_concurrent_requests)
    return server


def new_axon(config: MinerConfig, wallet: Any) -> Any:
    """bittensor's axon for `config` (not serving: `serve` or a front process serves it; publishing reads it)."""
    import bittensor as bt

    return bt.Axon(wallet=wallet, port=config.axon.port, ip=config.axon.host, external_ip=config.axon.external_ip,
                   external_port=config.axon.external_port, max_workers=config.axon.max_workers)


def serve(config: MinerConfig, wallet: Any, miner: Miner, sock: Any = None, server: Any = None) -> Any:
    """The axon with the miner's handlers behind the HTTP guard, served by `server` (from `listen`; a new one on
    `sock` if None); the server."""
    axon = new_axon(config, wallet)
    miner.attach(axon)
    server = server or listen(config, miner.outcomes, sock)
    server.open(axon, miner.on_response, config.axon.dispatch)
    return server


def run(argv: list[str] | None = None) -> int:
    """The miner's life: start-up (neurons/startup.py), serving, drain. Returns the exit code."""
    from neurons import startup

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["reload"]:  # `sn72-miner reload --config M`: tell the running miner (neurons/reload_command.py)
        from neurons.reload_command import main as reload_main

        return reload_main(args[1:])
    quiet_progress_bars()  # before anything imports tqdm, transformers or ultralytics
    try:
        return _run(argv)
    except startup.StartupError as exc:
        # Plain `error: ...` lines on a terminal or to a caller; under pm2 (it sets `pm_id`), whose copy of the
        # log is the record and adds no time (`time: false`), stamped like every other line.
        from datetime import datetime

        stamp = f"{datetime.now():%Y-%m-%d %H:%M:%S.%f}"[:-3] + " | ERROR    | " if "pm_id" in os.environ else ""
        for line in str(exc).splitlines():
            print(f"{stamp}error: {line}", file=sys.stderr, flush=True)
            if logs_configured():  # the log file has the line too (stderr has it already, plain)
                logger.bind(file_only=True).error("start-up failed: {}", line)
        return exc.code


def _run(argv: list[str] | None) -> int:
    from prometheus_client import CollectorRegistry, disable_created_metrics

    from cascade.process_metrics import process_registry, publish_build_info, watch_gpu_memory
    from cascade.served_version import served
    from neurons import startup
    from neurons.chain import watch_registration
    from neurons.health import Health, MetricsServer, Phase
    from neurons.logs import LogSetupError, configure

    timeline = startup.Timeline()
    try:
        config, engine_config, check_only = load_config(argv)
        configure(config.logs, config.log_level)
    except (ConfigError, LogSetupError) as exc:
        raise startup.StartupError(str(exc)) from exc
    logger.info("cascade {} version {}, calibration {}", config.cascade_file, engine_config.cascade.version,
                engine_config.cascade.calibration or "none (the YAML's weights and margins)")
    if check_only:
        return startup.check(config, engine_config)
    timeline.mark("config")

    disable_created_metrics()  # `_created` series double every counter for nothing a dashboard reads
    registry = process_registry(CollectorRegistry())
    health = Health(registry)
    outcomes = AxonOutcomes(registry, config.summary_interval_s)
    front_count = front_processes(config.axon)
    limits = http_limits(config)
    logger.info("HTTP request slots: {}", startup.request_slots_line(limits, front_count))
    if front_count:  # the HTTP work in front processes (neurons/fronts.py), 503 "not ready" until `open`
        from neurons.fronts import Fronts

        listeners = startup.bind_listeners(config.axon.host, config.axon.port, "axon", "axon.port",
                                           max(64, config.axon.max_connections // front_count), front_count)
        server: Any = Fronts(config, limits, listeners, outcomes, _STARTED_NS, registry)
    else:
        axon_sock = startup.bind_listener(config.axon.host, config.axon.port, "axon", "axon.port",
                                          backlog=config.axon.max_connections)
        server = listen(config, outcomes, axon_sock)  # 503 "not ready" at once until the axon serves, never a wait
    metrics_server = None
    if config.metrics.port:
        metrics_sock = startup.bind_listener(config.metrics.host, config.metrics.port, "metrics", "metrics.port")
        metrics_server = MetricsServer(metrics_sock, registry, health).start()
    logger.info("listening: axon {}:{}{}", config.axon.host, config.axon.port,
                f", metrics {config.metrics.host}:{config.metrics.port} (/metrics /healthz /readyz)"
                if metrics_server else "")
    timeline.mark("listeners")

    wallet, hotkey_address = startup.open_wallet(config)  # checked here first: each front opens it too
    if front_count:
        try:
            server.start()
        except RuntimeError as exc:
            raise startup.StartupError(f"axon.processes: {exc}", startup.EXIT_CRASH) from exc
        outcomes.track_http(server, limits.max_concurrent_requests)
        logger.info("{} front processes serve the axon: {}", front_count, server.describe())
    timeline.mark("wallet")
    subtensor, metagraph = startup.open_metagraph(config)
    metagraph.start()
    registration = watch_registration(metagraph, hotkey_address)
    registration.register_metrics(registry)
    metagraph.register_metrics(registry)
    timeline.mark("metagraph")

    findings, _ = startup.preflight(config, engine_config)
    startup.log_plan(findings)
    startup.require(findings)
    timeline.mark("models and placement checked")

    health.set(Phase.LOADING)
    engine_config = engine_config.model_copy(update={"cascade": served(engine_config.cascade)})  # models by content
    logger.info("serving cascade version {}", engine_config.cascade.version)
    quiet_bittensor_request_logs()
    logger.info("open-files limit {}", raise_fd_limit())
    from cascade.engine import Engine
    from cascade.process_settings import start_with_process_settings

    observers = build_observers(engine_config)
    for observer in observers:
        observer.register_metrics(registry)
    engine = Engine(engine_config, observers=observers, registry=registry)
    try:
        report = start_with_process_settings(engine)  # the process is the miner's: its settings are set here
    except Exception as exc:  # a model that fails to load: one line, restarted with back-off
        logger.opt(exception=exc).debug("loading failed")
        raise startup.StartupError(f"loading the cascade failed: {' '.join(str(exc).split()) or repr(exc)}",
                                   startup.EXIT_CRASH) from exc
    engine.prestart_decode_workers()  # in the background: the first costly image need not wait for one
    build_info = publish_build_info(registry, engine_config.cascade)
    watch_gpu_memory(registry, [device for devices in report.placement.values() for device in devices])
    timeline.mark("load and warm-up")

    reloader = Reloader(engine, config.cascade_file, registry=registry, build_info=build_info,
                        **config.reload.model_dump())
    health.details = reloader.state  # /status: what `sn72-miner reload` waits on
    if front_count:
        fronts = server  # /status also says which processes serve the axon: `kill`, `py-spy` or `top -p` need pids
        health.details = lambda: {**reloader.state(), "fronts": fronts.state()}
        from neurons.serving_core import ServingCore

        try:
            server.open(ServingCore(config, engine, outcomes, _STARTED_NS), metagraph)
        except RuntimeError as exc:
            raise startup.StartupError(f"axon.processes: {exc}", startup.EXIT_CRASH) from exc
        axon = new_axon(config, wallet) if subtensor is not None else None
    else:
        server = serve(config, wallet, Miner(config, engine, metagraph, outcomes), server=server)
        axon = server.axon
    if subtensor is not None:
        publish_axon(subtensor, config.chain.netuid, axon, config.chain.timeout_s)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reloader.request("SIGHUP"))
    health.set(Phase.READY)
    timeline.mark("axon")
    logger.info("{}", timeline.line())
    print(f"{READY_LINE} {config.axon.host}:{config.axon.port} hotkey={hotkey_address}", file=sys.stderr, flush=True)
    al = next((o for o in observers if hasattr(o, "stats")), None)

    def summarise(force: bool = False) -> None:
        outcomes.summarise(force=force, exits_by_level=engine.stats.exits_by_level,
                                 al_queue=None if al is None else al.stats().queue_depth)

    # A timed wait: a signal delivered to another thread does not interrupt an untimed lock wait.
    exit_code = 0
    while not stop.wait(0.5):
        summarise()
        if reloader.poll():  # a new cascade that fits only once this one is gone: drain, exit, be restarted
            exit_code = RESTART_EXIT_CODE
            break
    health.set(Phase.DRAINING)
    logger.info("stop requested: closing the listener and answering every accepted request")
    before = outcomes.snapshot()
    drained = server.stop(config.drain_timeout_s)
    answered = sum(v - before.get(k, 0) for k, v in outcomes.snapshot().items() if k.startswith("answered_"))
    if drained and engine.active() == 0:
        logger.info("drained: {} requests answered after the stop signal, none left", answered)
    elif engine.active() == 0:
        # The HTTP layer's own line above says what did not finish (the in-process server, or which front was killed).
        logger.warning("drain incomplete: {} answered after the stop signal; the HTTP layer did not finish in time",
                       answered)
    else:
        logger.warning("drain incomplete: {} answered, {} still in the engine", answered, engine.active())
    summarise(force=True)
    metagraph.stop()
    engine.close()
    if metrics_server is not None:
        metrics_server.stop()
    logger.info("stopped{}", f" (exit {exit_code}: to be restarted on the new cascade)" if exit_code else "")
    return exit_code


def main() -> None:
    """`sn72-miner` (and `python -m neurons.miner`): exit with the code `run` returns."""
    sys.exit(run())


if __name__ == "__main__":
    main()
