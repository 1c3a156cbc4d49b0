"""Entry point: `python -m neurons.miner --config config/miner.yaml [overrides]`.

Starts the engine (models placed, loaded and warmed), then a bittensor 10.5 axon serving
`ImageSynapse` and `ExtendedImageSynapse`. Forward never blocks uvicorn's loop: the engine works on
its own threads and the handler only awaits the answer, bounded by the request's deadline. SIGTERM
or SIGINT stops taking requests, waits for the ones in flight (drain), then exits.

No `from __future__ import annotations` here: `Axon.attach` inspects real annotation classes.
"""

import asyncio
import signal
import sys
import threading
import time
import typing
from collections import Counter
from collections.abc import Callable
from typing import Any

from loguru import logger

from cascade.config import EngineConfig
from cascade.decode import DecodeError
from cascade.request import Job, Status, deadline_from_timeout
from neurons.chain import MetagraphSource, chain_source, offline_source
from neurons.config import ConfigError, MinerConfig, load_config
from neurons.guards import GuardPolicy, TokenBucketLimiter, blacklist, priority
from neurons.protocol import ExtendedImageSynapse, ImageSynapse

READY_LINE = "MINER READY"  # printed once the axon serves; scripts and tests wait for it


class Miner:
    """The axon side: guards, forward, drain. The engine and metagraph source are handed in."""

    def __init__(self, config: MinerConfig, engine: Any, metagraph: MetagraphSource) -> None:
        self.config = config
        self.engine = engine
        self.metagraph = metagraph
        self.policy = GuardPolicy(
            allow_non_validators=config.guards.allow_non_validators,
            min_stake=config.guards.min_stake,
            allowed_hotkeys=frozenset(config.guards.allowed_hotkeys),
            denied_hotkeys=frozenset(config.guards.denied_hotkeys),
        )
        self.limiter = TokenBucketLimiter(config.guards.rate_per_s, config.guards.burst)
        self.counters: Counter[str] = Counter()  # exported by the metrics collector
        self.draining = False
        self.in_flight = 0
        ImageSynapse.cache_required_fields = config.axon.cache_header_schema

    # -- guards (event loop: pure and fast) ------------------------------------------------------
    def _blacklist(self, synapse: ImageSynapse) -> tuple[bool, str]:
        hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else None
        if self.draining:
            self.counters["refused_draining"] += 1
            return True, "miner is shutting down"
        refused, reason = blacklist(hotkey, self.metagraph.snapshot, self.policy)
        if refused:
            self.counters["refused_blacklist"] += 1
            logger.debug("refused {}: {}", hotkey, reason)
            return True, reason
        if not self.limiter.allow(str(hotkey)):
            self.counters["refused_rate_limit"] += 1
            return True, "rate limit exceeded"
        return False, reason

    def _priority(self, synapse: ImageSynapse) -> float:
        hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else None
        return priority(hotkey, self.metagraph.snapshot)

    # -- forward --------------------------------------------------------------------------------
    async def _forward(self, synapse: ImageSynapse) -> ImageSynapse:
        arrival_s = time.monotonic()
        deadline_s = deadline_from_timeout(
            arrival_s, synapse.timeout, self.config.deadline.timeout_cap_s, self.config.deadline.margin_s
        )
        hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else ""
        job = Job(
            payload=synapse.image or "",
            hotkey=hotkey or "",
            stake=self._priority(synapse),
            arrival_s=arrival_s,
            deadline_s=deadline_s,
            testnet_label=synapse.testnet_label,
        )
        self.in_flight += 1
        try:
            try:
                future = asyncio.wrap_future(self.engine.submit(job))
                result = await asyncio.wait_for(future, timeout=max(0.0, deadline_s - time.monotonic()))
            except TimeoutError:
                # The engine answers before the deadline by construction; this is the last guard.
                self.counters["answered_by_miner_timeout"] += 1
                synapse.prediction = self.engine.config.cascade.prior
                return synapse
            except DecodeError as exc:
                self.counters["refused_bad_image"] += 1
                return self._reject(synapse, 400, str(exc))
            except Exception as exc:  # noqa: BLE001 - a per-request engine failure becomes an answer (prior)
                self.counters["answered_engine_error"] += 1
                logger.exception("engine failed request {}: {!r}; answering from the prior", job.request_id, exc)
                synapse.prediction = self.engine.config.cascade.prior
                return synapse
            synapse.prediction = float(result.probability)
            self.counters[f"answered_{result.status.value}"] += 1
            if result.status is Status.PRIOR:
                logger.warning("answered {} from the prior", hotkey)
            return synapse
        finally:
            self.in_flight -= 1

    @staticmethod
    def _reject(synapse: ImageSynapse, status: int, message: str) -> ImageSynapse:
        """A clear error for the caller: the axon sends the status code and message as given."""
        import bittensor as bt

        if synapse.axon is None:
            synapse.axon = bt.TerminalInfo()
        synapse.axon.status_code = status
        synapse.axon.status_message = message
        return synapse

    # -- axon handlers with the exact signatures `Axon.attach` checks ---------------------------
    def handlers(self, cls: type) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        async def forward(synapse):  # type: ignore[no-untyped-def]
            return await self._forward(synapse)

        async def blacklist_fn(synapse):  # type: ignore[no-untyped-def]
            return self._blacklist(synapse)

        async def priority_fn(synapse):  # type: ignore[no-untyped-def]
            return self._priority(synapse)

        forward.__annotations__ = {"synapse": cls, "return": cls}
        blacklist_fn.__annotations__ = {"synapse": cls, "return": typing.Tuple[bool, str]}  # noqa: UP006
        priority_fn.__annotations__ = {"synapse": cls, "return": float}
        return forward, blacklist_fn, priority_fn

    def drain(self) -> None:
        """Refuse new requests and wait (bounded) for those in flight."""
        self.draining = True
        until = time.monotonic() + self.config.drain_timeout_s
        while (self.in_flight > 0 or self.engine.active() > 0) and time.monotonic() < until:
            time.sleep(0.05)
        left = self.in_flight + self.engine.active()
        if left:
            logger.warning("drain timed out with {} requests in flight", left)
        else:
            logger.info("drained: no request in flight")


def wait_listening(host: str, port: int, timeout_s: float = 30.0) -> None:
    """uvicorn binds on its own thread: READY is printed only once a connection is accepted."""
    import socket

    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        try:
            with socket.create_connection((target, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the axon is not accepting connections on {host}:{port} after {timeout_s:.0f}s")


def build_observers(engine_config: EngineConfig) -> list[Any]:
    observers: list[Any] = []
    if engine_config.active_learning.enabled:
        from cascade.observers.active_learning import ActiveLearningObserver

        observers.append(ActiveLearningObserver(engine_config.active_learning))
    return observers


def run(argv: list[str] | None = None) -> int:
    try:
        config, engine_config, check_only = load_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logger.remove()
    logger.add(sys.stderr, level=config.log_level, enqueue=False)
    logger.info("cascade {} version {}, calibration {}", config.cascade_file, engine_config.cascade.version,
                engine_config.cascade.calibration or "none (the YAML's weights and margins)")
    if check_only:
        print(f"configuration OK: {len(engine_config.cascade.levels)} levels, cascade {config.cascade_file}")
        return 0

    import bittensor as bt

    from cascade.engine import Engine

    wallet = bt.Wallet(name=config.wallet.name, hotkey=config.wallet.hotkey, path=config.wallet.path)
    try:
        hotkey_address = wallet.hotkey.ss58_address
    except Exception as exc:  # noqa: BLE001 - bittensor-wallet raises several types for a missing key
        print(f"error: cannot open hotkey {config.wallet.name}/{config.wallet.hotkey} in {config.wallet.path}: {exc}",
              file=sys.stderr)
        return 2

    subtensor = None
    if config.chain.offline:
        assert config.chain.metagraph_file is not None
        metagraph = offline_source(config.chain.metagraph_file).start()
        logger.info("offline mode: metagraph from {}", config.chain.metagraph_file)
    else:
        subtensor = bt.Subtensor(network=config.chain.network)
        metagraph = chain_source(subtensor, config.chain.netuid, config.chain.resync_interval_s).start()
    if metagraph.snapshot.get(hotkey_address) is None:
        logger.warning("this miner's hotkey {} is not in the metagraph: validators will not query it", hotkey_address)

    engine = Engine(engine_config, observers=build_observers(engine_config))
    engine.start()
    miner = Miner(config, engine, metagraph)

    if config.metrics.port:
        from cascade.observers.metrics import start_metrics_server

        start_metrics_server(config.metrics.host, config.metrics.port, engine, miner.counters)

    axon = bt.Axon(
        wallet=wallet,
        port=config.axon.port,
        ip=config.axon.host,
        external_ip=config.axon.external_ip,
        external_port=config.axon.external_port,
        max_workers=config.axon.max_workers,
    )
    axon.fast_config.host = config.axon.host
    for cls in (ImageSynapse, ExtendedImageSynapse):
        forward, blacklist_fn, priority_fn = miner.handlers(cls)
        axon.attach(forward_fn=forward, blacklist_fn=blacklist_fn, priority_fn=priority_fn)
    axon.start()
    wait_listening(config.axon.host, config.axon.port)
    if subtensor is not None:
        response = subtensor.serve_axon(netuid=config.chain.netuid, axon=axon)
        if response.success:
            logger.info("axon published on chain: {}:{}", axon.external_ip, axon.external_port)
        else:
            logger.error("serve_axon failed: {} (validators will not find this miner)", response.message)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"{READY_LINE} {config.axon.host}:{config.axon.port} hotkey={hotkey_address}", flush=True)
    logger.info("serving on {}:{}", config.axon.host, config.axon.port)
    # A timed wait: a signal delivered to another thread does not interrupt an untimed lock wait.
    while not stop.wait(0.5):
        pass
    logger.info("stop requested: draining")
    miner.drain()
    axon.stop()
    metagraph.stop()
    engine.close()
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(run())
