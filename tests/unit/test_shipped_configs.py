"""Every miner configuration shipped in config/ validates, and the testnet one points at netuid 323."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurons.config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("miner.*.yaml")), ids=lambda p: p.name)
def test_each_shipped_miner_config_loads(path):
    miner, engine, _ = load_config(["--config", str(path)], environ={})
    assert miner.cascade_file.exists() and engine.cascade.levels


def test_the_testnet_config_is_testnet_and_production_is_finney():
    testnet = load_config(["--config", str(CONFIG_DIR / "miner.testnet.yaml")], environ={})[0]
    production = load_config(["--config", str(CONFIG_DIR / "miner.production.yaml")], environ={})[0]
    assert (testnet.chain.network, testnet.chain.netuid) == ("test", 323)
    assert (production.chain.network, production.chain.netuid) == ("finney", 72)
    assert testnet.natix.model_url == production.natix.model_url == ""
