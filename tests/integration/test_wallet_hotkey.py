"""The miner reads its hotkey once (neurons/startup.py `open_wallet`).

bittensor-wallet's `Wallet.hotkey` reads and parses the key file again on every access (~1.3 ms), and the axon reads
it at least twice per request: the miner's wallet must hand the axon the key it loaded at start-up.
"""

from __future__ import annotations

from neurons.config import MinerConfig
from neurons.startup import open_wallet
from sn72_lab.offline import ensure_wallet


def test_the_hotkey_is_read_once_and_served_from_memory(tmp_path):
    made = ensure_wallet(tmp_path / "wallets", "miner")
    config = MinerConfig.model_validate({
        "cascade_file": "unused.yaml",
        "wallet": {"name": "miner", "hotkey": "default", "path": str(tmp_path / "wallets")},
    })
    wallet, address = open_wallet(config)
    assert address == made.hotkey.ss58_address
    key_file = tmp_path / "wallets" / "miner" / "hotkeys" / "default"
    assert key_file.exists()
    key_file.rename(key_file.with_suffix(".moved"))  # a per-request read would fail from now on
    for _ in range(3):
        assert wallet.hotkey.ss58_address == address
    message = b"nonce.validator.miner.uuid.hash"
    assert wallet.hotkey.verify(message, wallet.hotkey.sign(message))


def test_opening_a_test_wallet_again_prints_nothing_and_gives_the_same_keys(tmp_path, capfd):
    made = ensure_wallet(tmp_path / "wallets", "validator0")
    capfd.readouterr()
    again = ensure_wallet(tmp_path / "wallets", "validator0")
    printed = capfd.readouterr()
    assert "already exists" not in printed.out + printed.err
    assert again.hotkey.ss58_address == made.hotkey.ss58_address
    assert again.coldkeypub.ss58_address == made.coldkeypub.ss58_address
