"""Offline set-up shared by the demo, the benchmarks and the end-to-end tests.

Throwaway wallets (no password) and a local metagraph file in which chosen hotkeys are validators.
Never use these helpers for wallets that hold funds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neurons.chain import Neuron, write_metagraph_json


def ensure_wallet(path: Path, name: str, hotkey: str = "default") -> Any:
    """An unencrypted test wallet, created if missing."""
    import bittensor as bt

    wallet = bt.Wallet(name=name, hotkey=hotkey, path=str(path))
    wallet.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
    return wallet


def write_offline_metagraph(
    path: Path, netuid: int, miner_hotkey: str, validators: dict[str, float], others: list[str] = ()  # type: ignore[assignment]
) -> None:
    """uid 0 is the miner; then one validator (permit, stake) per entry; then registered non-validators."""
    neurons = [Neuron(0, miner_hotkey, False, 0.0)]
    for hotkey, stake in validators.items():
        neurons.append(Neuron(len(neurons), hotkey, True, float(stake)))
    for hotkey in others:
        neurons.append(Neuron(len(neurons), hotkey, False, 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_metagraph_json(path, netuid, neurons)
