"""Offline set-up shared by the demo, the benchmarks and the end-to-end tests.

Throwaway wallets (no password), a local metagraph file in which chosen hotkeys are validators, and
the miner process started as operators start it. Never use these helpers for wallets that hold funds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neurons.chain import Neuron, write_metagraph_json
from neurons.miner import READY_LINE


def ensure_wallet(path: Path, name: str, hotkey: str = "default") -> Any:
    """An unencrypted test wallet, created if missing."""
    import bittensor as bt

    wallet = bt.Wallet(name=name, hotkey=hotkey, path=str(path))
    # Asked of a wallet that exists, bittensor-wallet prints "ColdKey ... already exists" and "HotKey ..." whatever
    # `suppress` says: sn72-bench's client processes open every wallet again, 16 such lines a round with 8 of them.
    made = wallet.coldkeypub_file.exists_on_device() and wallet.hotkey_file.exists_on_device()
    if not made:
        wallet.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
    return wallet


def write_offline_metagraph(
    path: Path, netuid: int, miner_hotkey: str, validators: dict[str, float], others: Sequence[str] = ()
) -> None:
    """uid 0 is the miner; then one validator (permit, stake) per entry; then registered non-validators."""
    neurons = [Neuron(0, miner_hotkey, False, 0.0)]
    for hotkey, stake in validators.items():
        neurons.append(Neuron(len(neurons), hotkey, True, float(stake)))
    for hotkey in others:
        neurons.append(Neuron(len(neurons), hotkey, False, 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_metagraph_json(path, netuid, neurons)


ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MinerProcess:
    process: subprocess.Popen[str]
    port: int
    metrics_port: int
    hotkey: str
    wallets: Path
    lines: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Wallets:
    path: Path
    miner: Any
    validator: Any
    non_validator: Any
    stranger: Any


def make_wallets(folder: Path) -> Wallets:
    path = folder / "wallets"
    wallets = Wallets(path, *(ensure_wallet(path, name) for name in ("miner", "validator", "peer", "stranger")))
    write_offline_metagraph(
        folder / "metagraph.json",
        72,
        wallets.miner.hotkey.ss58_address,
        {wallets.validator.hotkey.ss58_address: 5000.0},
        others=[wallets.non_validator.hotkey.ss58_address],
    )
    return wallets


def stop_process(process: subprocess.Popen[Any], grace_s: float = 30.0) -> None:
    """SIGTERM (the miner drains), then SIGKILL if it has not ended within `grace_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def run_miner(folder: Path, wallet_path: Path, miner_wallet: Any, cascade: dict[str, Any],
              extra: dict[str, Any] | None = None, ready_timeout_s: float = 240.0,
              nice: int = 0, wrap: Sequence[str] = ()) -> Iterator[MinerProcess]:
    """The miner as operators run it: `python -m neurons.miner --config miner.yaml`.

    `nice` lowers the miner's CPU priority: a load test whose client shares the machine gives the client
    the CPU first, so the client times its requests as a validator on its own machine would. `wrap` runs the
    miner through another command (which must end by exec-ing its arguments), e.g. one that mounts a small disk.
    """
    port, metrics_port = free_port(), free_port()
    (folder / "cascade.yaml").write_text(yaml.safe_dump(cascade))
    config: dict[str, Any] = {
        "wallet": {"name": miner_wallet.name, "hotkey": "default", "path": str(wallet_path)},
        "chain": {"offline": True, "metagraph_file": str(folder / "metagraph.json")},
        "axon": {"host": "127.0.0.1", "port": port, "external_ip": "127.0.0.1"},
        "metrics": {"port": metrics_port},
        "cascade_file": "cascade.yaml",
        "drain_timeout_s": 10.0,
        "log_level": "INFO",
    }
    # The whole suite may run with front processes (tests/README: SN72_TEST_AXON_PROCESSES=2), unless a test sets them.
    fronts = os.environ.get("SN72_TEST_AXON_PROCESSES")
    if fronts and "processes" not in (extra or {}).get("axon", {}):
        config["axon"]["processes"] = int(fronts)
    for key, value in (extra or {}).items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    (folder / "miner.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(folder)}
    process = subprocess.Popen(
        [*wrap, sys.executable, "-m", "neurons.miner", "--config", str(folder / "miner.yaml")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )
    miner = MinerProcess(process, port, metrics_port, miner_wallet.hotkey.ss58_address, wallet_path)
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            miner.lines.append(line.rstrip())
            if line.startswith(READY_LINE):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    until = time.monotonic() + ready_timeout_s
    while not ready.wait(0.2):
        if process.poll() is not None or time.monotonic() > until:
            process.kill()
            raise RuntimeError("miner did not start:\n" + "\n".join(miner.lines[-40:]))
    try:
        yield miner
    finally:
        stop_process(process)
