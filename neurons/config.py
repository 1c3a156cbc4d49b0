"""The miner's whole configuration: one YAML file, then environment, then command-line overrides.

Precedence (last wins): YAML file < `MINER_<SECTION>__<FIELD>` environment variables < named flags
(`--wallet.name`, `--axon.port`, ...) < `--set section.field=value`. Values from the environment and
the command line are strings typed by the schema (a hotkey named `2024` stays a string; `off` is false
only for a boolean field). Everything is validated once; an error names the field, the value and
where it came from (neurons/config_sources.py does the layering, with pydantic-settings).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from cascade.config import (
    ActiveLearningConfig,
    CascadeConfig,
    DecodeConfig,
    EngineConfig,
    SchedulerConfig,
    Strict,
    format_validation_error,
    load_cascade,
    read_yaml,
)
from cascade.event_loop import EventLoopKind
from neurons.config_sources import ENV_PREFIX, LayerError, layered_config
from neurons.nonces import DEFAULT_FUTURE_S, DEFAULT_MAX_AGE_S, DEFAULT_MAX_ENTRIES

__all__ = ["ENV_PREFIX", "ConfigError", "MinerConfig", "build_parser", "load_config"]


class WalletConfig(Strict):
    # A wallet or hotkey may be named `2024` in the YAML file: names are strings, whatever YAML thinks.
    model_config = ConfigDict(coerce_numbers_to_str=True)

    name: str = Field("default", min_length=1)
    hotkey: str = Field("default", min_length=1)
    path: str = Field("~/.bittensor/wallets", min_length=1)


class ChainConfig(Strict):
    netuid: int = Field(72, ge=0, le=65535, description="72 on finney; 323 on testnet.")
    network: str = Field("finney", min_length=1, description="finney, test, local, or a ws:// endpoint.")
    offline: bool = Field(False, description="No chain at all: the metagraph comes from metagraph_file.")
    metagraph_file: Path | None = Field(None, description="Offline metagraph JSON (re-read when it changes).")
    resync_interval_s: float = Field(600.0, ge=5.0, le=86_400.0)
    timeout_s: float = Field(60.0, gt=0.0, le=3600.0, description="Longest wait for one chain call, then an error.")

    @model_validator(mode="after")
    def _offline_needs_file(self) -> ChainConfig:
        if self.offline and self.metagraph_file is None:
            raise ValueError("chain.offline=true needs chain.metagraph_file (a JSON metagraph)")
        return self


class AxonConfig(Strict):
    host: str = Field("0.0.0.0", description="Bind address.")
    port: int = Field(8091, ge=1, le=65535)
    external_ip: str | None = Field(None, description="Published ip; required offline (no lookup is made).")
    external_port: int | None = Field(None, ge=1, le=65535)
    max_workers: int = Field(16, ge=1, le=1024, description="Threads of the axon's priority pool (idle here).")
    cache_header_schema: bool = Field(True, description="Cache the synapse schema used for response headers.")
    max_request_bytes: int = Field(
        48 * 1024 * 1024, ge=4096, le=1 << 32, description="Largest request body; larger ones get 413 unread."
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1 << 20, description="Largest request header block (400).")
    header_timeout_s: float = Field(10.0, gt=0.0, le=600.0, description="A request's headers must arrive in this.")
    body_timeout_s: float = Field(15.0, gt=0.0, le=600.0, description="A request's body must arrive in this (408).")
    keep_alive_s: float = Field(5.0, gt=0.0, le=600.0, description="Idle keep-alive connections close after this.")
    max_connections: int = Field(
        4096, ge=16, le=1_000_000, description="Open connections; beyond it the longest-idle one is closed."
    )
    max_connections_per_ip: int = Field(
        256, ge=1, le=1_000_000, description="Open connections from one address (above any caller's concurrency)."
    )
    max_concurrent_requests: int | None = Field(
        None, ge=1, le=100_000,
        description="Requests processed at once, every HTTP event loop together (the miner process's, or each front "
        "process's); the rest wait their turn in arrival order. Default: 128 per event loop, so front processes "
        "add room as they add loops (fixed at 128 in all, eight fronts held 16 each: the GPU's batches starved, "
        "docs/performance.md).",
    )
    max_concurrent_requests_per_ip: int | None = Field(
        None, ge=1, le=100_000,
        description="Of max_concurrent_requests, at most this many held by one address (default: half), so one caller "
        "cannot crowd out the rest; raise it for a load test sent from one machine.",
    )
    event_loop: EventLoopKind = Field(
        "uvloop", description="The HTTP server's event loop: uvloop (cheaper per request) or the standard library's."
    )
    dispatch: Literal["direct", "fastapi"] = Field(
        "direct",
        description="How a request reaches the handlers: direct (bittensor's own steps called in order as one plain "
        "ASGI function) or fastapi (through bittensor's FastAPI app and middleware, as the stock axon serves). Both "
        "answer alike (docs/security.md names the exceptions); direct costs about a third less CPU a request "
        "(docs/performance.md).",
    )
    processes: int | None = Field(
        None, ge=0, le=64,
        description="Front processes for the HTTP work (parsing, signatures, bodies) beside the miner process, which "
        "keeps the scheduler and the engine; 0 serves HTTP in the miner process. Default: 0 below 8 CPUs, else "
        "a quarter of them, at most 4 (docs/performance.md).",
    )
    nonce_max_age_s: float = Field(
        DEFAULT_MAX_AGE_S, gt=0.0, le=3600.0,
        description="A request signed longer ago than this (its nonce, by our clock) is refused (401), whatever its "
        "headers claim: bittensor's 4 s allowance plus the 12 s timeout cap.",
    )
    nonce_future_s: float = Field(
        DEFAULT_FUTURE_S, ge=0.0, le=3600.0,
        description="How far ahead of ours a caller's clock may run (nonces beyond: 401).",
    )
    nonce_record_size: int = Field(
        DEFAULT_MAX_ENTRIES, ge=64, le=10_000_000,
        description="Verified nonces remembered to refuse replays (~220 bytes each); past it the busiest caller's "
        "oldest are dropped and its older nonces refused.",
    )


def front_processes(axon: AxonConfig, cpus: int | None = None) -> int:
    """`axon.processes`, or its default for this machine's CPU count."""
    if axon.processes is not None:
        return axon.processes
    cpus = cpus or os.cpu_count() or 1
    return 0 if cpus < 8 else min(4, cpus // 4)


REQUEST_SLOTS_PER_LOOP = 128  # one event loop shared among a thousand requests finishes all of them late


def request_slots(axon: AxonConfig, fronts: int) -> int:
    """`axon.max_concurrent_requests`, or its default for `fronts` front processes (0: the miner process's loop)."""
    if axon.max_concurrent_requests is not None:
        return axon.max_concurrent_requests
    return REQUEST_SLOTS_PER_LOOP * max(1, fronts)


class DeadlineConfig(Strict):
    timeout_cap_s: float = Field(12.0, gt=0.0, le=600.0, description="The caller's timeout is trusted up to this.")
    margin_s: float = Field(0.6, ge=0.0, le=60.0, description="Kept back to serialise and send the answer.")
    nonce_trust_s: float = Field(
        4.0, ge=0.0, le=30.0,
        description="The caller's clock started when it signed (its nonce): count up to this much of that age.",
    )

    @model_validator(mode="after")
    def _margin_below_cap(self) -> DeadlineConfig:
        if self.margin_s >= self.timeout_cap_s:
            raise ValueError(f"margin_s ({self.margin_s}) must be below timeout_cap_s ({self.timeout_cap_s})")
        return self


class GuardConfig(Strict):
    allow_non_validators: bool = Field(False, description="Answer registered hotkeys without a validator permit.")
    min_stake: float = Field(0.0, ge=0.0, description="Refuse callers with less stake.")
    allowed_hotkeys: list[str] = Field(default_factory=list, description="Always answered.")
    denied_hotkeys: list[str] = Field(default_factory=list, description="Never answered.")
    rate_per_s: float = Field(5.0, ge=0.0, le=100_000.0, description="Sustained requests per hotkey (0: off).")
    burst: float = Field(40.0, ge=1.0, le=1_000_000.0, description="Requests a hotkey may send at once.")


class MetricsConfig(Strict):
    port: int = Field(0, ge=0, le=65535, description="Prometheus port (0: no metrics server).")
    host: str = "127.0.0.1"


class LogConfig(Strict):
    """Where the log goes besides stderr, and how the file is rotated (neurons/logs.py)."""

    file: Path | None = Field(None, description="Log file (relative: against the miner YAML's folder); None: stderr "
                              "only.")
    rotation_mb: float = Field(100.0, ge=0.01, le=1_000_000.0, description="The file is rotated at this size (MB).")
    retention: int = Field(10, ge=1, le=10_000, description="Rotated files kept; older ones are deleted.")
    compression: Literal["gz", "bz2", "xz", "zip", "none"] = Field("gz", description="Of rotated files.")
    json_lines: bool = Field(False, description="One JSON object per line (stderr and file) instead of text.")
    colour: Literal["auto", "always", "never"] = Field("auto", description="auto: only when stderr is a terminal.")


class NatixConfig(Strict):
    """The subnet owner's side: the submitted model (docs/onboarding.md)."""

    model_url: str = Field("", max_length=512, description="Hugging Face repository of the submitted model; "
                           "answered in ExtendedImageSynapse.model_url and sent by sn72-register.")
    base_url: str = Field("https://hydra.natix.network", min_length=1, description="NATIX application server.")


class ReloadConfig(Strict):
    """Hot reload of the cascade file (docs/reload.md): on SIGHUP always; on a file change if `watch`."""

    watch: bool = Field(False, description="Reload when the cascade YAML or its calibration file changes.")
    watch_settle_s: float = Field(
        1.0, ge=0.0, le=600.0, description="A changed file is read once it has stayed the same this long."
    )
    drain_restart: bool = Field(
        False, description="A cascade that fits only without the serving one: drain, exit 75, let pm2 restart."
    )


class MinerConfig(Strict):
    wallet: WalletConfig = Field(default_factory=WalletConfig)
    chain: ChainConfig = Field(default_factory=ChainConfig)
    axon: AxonConfig = Field(default_factory=AxonConfig)
    deadline: DeadlineConfig = Field(default_factory=DeadlineConfig)
    guards: GuardConfig = Field(default_factory=GuardConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    natix: NatixConfig = Field(default_factory=NatixConfig)
    logs: LogConfig = Field(default_factory=LogConfig)
    cascade_file: Path = Field(..., description="Cascade YAML (relative paths: against the miner YAML's folder).")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    active_learning: ActiveLearningConfig = Field(default_factory=ActiveLearningConfig)
    reload: ReloadConfig = Field(default_factory=ReloadConfig)
    drain_timeout_s: float = Field(15.0, ge=0.0, le=600.0, description="Wait for in-flight answers on SIGTERM.")
    summary_interval_s: float = Field(
        60.0, ge=1.0, le=86_400.0, description="One summary line (answers, refusals, latency, exits) per interval."
    )
    log_level: str = Field("INFO", pattern="^(TRACE|DEBUG|INFO|SUCCESS|WARNING|ERROR)$")

    @model_validator(mode="after")
    def _offline_needs_external_ip(self) -> MinerConfig:
        if self.chain.offline and not self.axon.external_ip:
            raise ValueError("chain.offline=true needs axon.external_ip (offline, no ip lookup is made)")
        return self

    @model_validator(mode="after")
    def _body_holds_a_payload(self) -> MinerConfig:
        if self.axon.max_request_bytes < self.decode.max_payload_bytes:
            raise ValueError(
                f"axon.max_request_bytes ({self.axon.max_request_bytes}) must be >= decode.max_payload_bytes "
                f"({self.decode.max_payload_bytes}): the body carries the payload"
            )
        return self


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every bad field, its value and its source."""


# Named flags -> dotted config keys (the common ones; anything else through --set).
FLAGS = {
    "--wallet.name": "wallet.name",
    "--wallet.hotkey": "wallet.hotkey",
    "--wallet.path": "wallet.path",
    "--netuid": "chain.netuid",
    "--network": "chain.network",
    "--metagraph-file": "chain.metagraph_file",
    "--axon.port": "axon.port",
    "--axon.external_ip": "axon.external_ip",
    "--cascade": "cascade_file",
    "--metrics.port": "metrics.port",
    "--log-level": "log_level",
    "--logs.file": "logs.file",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sn72-miner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes (docs/operations.md): 0 stopped cleanly (or --check passed); 2 configuration to fix (pm2 "
               "does not restart it); 70 device context lost (restarted); 75 drained for a restart it asked for "
               "(--drain-restart; restarted on the new cascade); 1 any other failure (restarted with back-off). "
               "A changed cascade or calibration into the running miner: sn72-miner reload --config M "
               "(its own exit codes: sn72-miner reload --help; docs/reload.md).",
    )
    parser.add_argument("--config", type=Path, required=True, help="Miner YAML (see config/miner.*.yaml).")
    for flag, key in FLAGS.items():
        parser.add_argument(flag, dest=flag, default=None, metavar="VALUE", help=f"overrides {key}")
    parser.add_argument("--offline", dest="--offline", action="store_const", const="true", default=None,
                        help="no chain: the metagraph comes from chain.metagraph_file")
    parser.add_argument("--drain-restart", dest="--drain-restart", action="store_const", const="true", default=None,
                        help="a new cascade that fits only without the serving one: drain, then exit 75")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any dotted key, typed by the schema (lists and mappings as JSON)")
    parser.add_argument("--check", action="store_true",
                        help="run every start-up step short of loading weights, say what would fail, and exit "
                             "(ports held by this config's running miner are not a problem)")
    return parser


def load_config(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[MinerConfig, EngineConfig, bool]:
    """(miner config, engine config, check_only) from the command line, environment and YAML."""
    args = vars(build_parser().parse_args(argv))
    config_path: Path = args["config"]
    try:
        tree = read_yaml(config_path)
    except ValueError as exc:  # missing or unreadable: one line naming the file
        raise ConfigError(str(exc)) from exc
    switches = {"--offline": "chain.offline", "--drain-restart": "reload.drain_restart"}
    flags = [(flag, FLAGS.get(flag) or switches[flag], value) for flag, value in args.items()
             if flag.startswith("--") and value is not None]
    sets = []
    for item in args["set"]:
        if "=" not in item:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        sets.append((f"--set {item}", key.strip(), value))
    try:
        miner = layered_config(MinerConfig, config_path, tree, os.environ if environ is None else environ,
                               flags, sets)
    except LayerError as exc:
        raise ConfigError(str(exc)) from exc
    miner = _resolve_paths(miner, config_path.resolve().parent)
    try:
        cascade: CascadeConfig = load_cascade(miner.cascade_file)
    except ValidationError as exc:
        raise ConfigError(f"invalid cascade in {miner.cascade_file}:\n{format_validation_error(exc)}") from exc
    except ValueError as exc:  # an unreadable file, or a calibration that does not fit the cascade
        raise ConfigError(f"invalid cascade in {miner.cascade_file}: {exc}") from exc
    engine = EngineConfig(
        cascade=cascade, scheduler=miner.scheduler, decode=miner.decode, active_learning=miner.active_learning
    )
    return miner, engine, bool(args["check"])


def _resolve_paths(miner: MinerConfig, base: Path) -> MinerConfig:
    def resolve(path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else (base / path).resolve()

    miner.cascade_file = resolve(miner.cascade_file)
    miner.wallet.path = str(resolve(Path(miner.wallet.path)))
    if miner.chain.metagraph_file is not None:
        miner.chain.metagraph_file = resolve(miner.chain.metagraph_file)
    miner.active_learning.directory = resolve(miner.active_learning.directory)
    if miner.logs.file is not None:
        miner.logs.file = resolve(miner.logs.file)
    return miner
