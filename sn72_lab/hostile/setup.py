"""`sn72-redteam --setup-offline DIR`: everything needed to attack a miner on this machine, nothing on a chain."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from sn72_lab.hostile import target

# The red-team target holds fewer request slots than the default 128, so that one address's slow bodies (up to its
# 64 connections) can fill them all where nothing shares slots by address (defect 5 of the second
# red-team pass).
RED_TEAM_HTTP = {**target.TEST_HTTP_LIMITS, "max_concurrent_requests": 32}


def miner_config(folder: Path, cast: target.Cast, port: int, metrics_port: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "wallet": {"name": cast.miner.name, "hotkey": "default", "path": str(folder / "wallets")},
        "chain": {"offline": True, "metagraph_file": str(folder / "metagraph.json")},
        "axon": {"host": "127.0.0.1", "port": port, "external_ip": "127.0.0.1"},
        "metrics": {"port": metrics_port},
        "cascade_file": "cascade.yaml",
        "log_level": "INFO",
    }
    for section, values in target.miner_overrides(RED_TEAM_HTTP).items():
        config.setdefault(section, {}).update(values)
    return config


def write_target(folder: Path, port: int | None = None, metrics_port: int | None = None,
                 probers: int = 0) -> tuple[target.Cast, int, int]:
    """Wallets, metagraph, tiny models, cascade.yaml and miner.yaml under `folder`: (cast, port, metrics port).

    Ports default to free ones (other miners may run on this machine).
    """
    from sn72_lab.offline import free_port

    port, metrics_port = port or free_port(), metrics_port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    cast = target.write_cast(folder, probers)  # probers: more registered validators to sign attacks
    (folder / "cascade.yaml").write_text(yaml.safe_dump(target.cascade(folder / "models")))
    (folder / "miner.yaml").write_text(yaml.safe_dump(miner_config(folder, cast, port, metrics_port)))
    return cast, port, metrics_port


def setup_offline(folder: Path, port: int | None = None, metrics_port: int | None = None) -> str:
    """Write the offline target under `folder` (`write_target`); return how to go on."""
    cast, port, metrics_port = write_target(folder, port, metrics_port)
    python = sys.executable
    return "\n".join([
        f"offline target written to {folder}",
        "start the miner (another terminal; the miner must set its own offline switches):",
        f"  {python} -m neurons.miner --config {folder / 'miner.yaml'}",
        "then attack it:",
        f"  sn72-redteam --miner 127.0.0.1:{port} --miner-hotkey {cast.miner.hotkey.ss58_address} "
        f"--wallet.path {folder / 'wallets'} --validator {cast.validator.name} --attacker {cast.attacker.name} "
        f"--non-validator {cast.non_validator.name} --pid $(pgrep -f 'neurons.miner --config {folder}') "
        f"--json {folder / 'redteam.json'}",
    ])
