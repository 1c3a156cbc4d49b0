"""What the operator tools (sn72-al, sn72-register, sn72-query, sn72-demo) read from the miner's own config.

Each tool takes `--config MINER_YAML` (default: `$MINER_CONFIG`, the variable pm2.config.js reads too) and
loads it with the miner's loader: the YAML file, then `MINER_<SECTION>__<FIELD>` environment variables, paths
resolved against the file's folder. So a tool finds the store, the wallet, the ports and the metagraph the
running miner uses, not defaults of its own. The cascade file is not read: no tool here needs it, and a tool
must work while the cascade is being edited.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_ENV = "MINER_CONFIG"


class ToolError(Exception):
    """A problem an operator fixes (exit 2): the message is one line that names the fix."""


def add_config_argument(parser: argparse.ArgumentParser, reads: str) -> None:
    """`--config`, defaulting to $MINER_CONFIG; `reads` says which values the tool takes from it."""
    parser.add_argument(
        "--config", type=Path, default=os.environ.get(CONFIG_ENV) or None, metavar="MINER_YAML",
        help=f"the miner's config (default: ${CONFIG_ENV}), loaded as the miner loads it (file, then MINER_* "
             f"environment variables): {reads} come from it",
    )


def load_miner_config(path: Path, environ: Mapping[str, str] | None = None) -> Any:
    """The miner's config (neurons.config.MinerConfig) from `path` and the environment; ToolError when invalid."""
    from cascade.config import read_yaml
    from neurons.config import MinerConfig, _resolve_paths
    from neurons.config_sources import LayerError, layered_config

    try:
        tree = read_yaml(path)
        miner = layered_config(MinerConfig, path, tree, os.environ if environ is None else environ, [], [])
    except (LayerError, ValueError) as exc:
        problems = "; ".join(line for line in str(exc).splitlines() if line != "invalid configuration:")
        raise ToolError(f"--config {path}: {problems}") from exc
    return _resolve_paths(miner, path.resolve().parent)


def open_wallet(name: str, hotkey: str, path: str, role: str = "wallet") -> Any:
    """A bittensor wallet whose hotkey can sign; ToolError naming the key file and how to create it otherwise."""
    from bittensor_wallet import Wallet

    folder = str(Path(path).expanduser())
    wallet = Wallet(name=name, hotkey=hotkey, path=folder)
    key_file = Path(folder) / name / "hotkeys" / hotkey
    # A wallet without its coldkey needs `wallet create` (coldkey and hotkey); one with it, just the hotkey.
    verb = "new-hotkey" if (Path(folder) / name / "coldkeypub.txt").exists() else "create"
    create = f"btcli wallet {verb} --wallet.name {name} --wallet.hotkey {hotkey} --wallet.path {folder}"
    if not wallet.hotkey_file.exists_on_device():
        raise ToolError(f"{role}: no hotkey file {key_file}: create it with `{create}` (or pass --wallet.name, "
                        "--wallet.hotkey and --wallet.path of an existing one)")
    if wallet.hotkey_file.is_encrypted():
        raise ToolError(f"{role}: hotkey {key_file} is password-protected; these tools need an unencrypted hotkey")
    try:
        wallet.unlock_hotkey()
    except Exception as exc:  # bittensor-wallet raises several types for an unreadable key
        raise ToolError(f"{role}: cannot read hotkey {key_file}: {' '.join(str(exc).split())}") from exc
    return wallet
