"""The operator tools read the miner's own config: `--config MINER_YAML`, or $MINER_CONFIG.

Each test runs the tool's entry module as a subprocess against real files: a store the config names, an offline
metagraph the config names. A tool that used defaults of its own (./al-store, the chain) fails these.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade.observers.al_store import ALStore, Reason, Sample
from neurons.chain import Neuron, write_metagraph_json
from sn72_lab.offline import ensure_wallet, free_port
from tests.integration.test_al_export import jpeg

ROOT = Path(__file__).resolve().parents[2]


def tool(module: str, *args: str, home: Path, cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MINER_")}
    environ.update({"HOME": str(home), "PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=120)


def miner_yaml(folder: Path, **sections: Any) -> Path:
    """A miner config with relative paths (resolved against its folder, as the miner does) and a cascade file."""
    (folder / "cascade.yaml").write_text(yaml.safe_dump(
        {"levels": [{"name": "l", "experts": [{"name": "e", "backend": "hf_classifier", "model": "x/y"}]}]}))
    config = {"cascade_file": "cascade.yaml", "active_learning": {"directory": "state/al"}, **sections}
    path = folder / "miner.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_record(directory: Path) -> int:
    with ALStore(directory) as store:
        sample = Sample(image=jpeg(3), reason=Reason.UNCERTAIN, created_at=1000.0, label=None, hotkey="5Caller",
                        width=8, height=8, status="deadline", probability=0.4, experts=())
        record_id = store.add(sample).record_id
    assert record_id is not None
    return record_id


@pytest.mark.slow
def test_sn72_al_finds_the_store_the_miner_config_names(tmp_path):
    (tmp_path / "conf").mkdir()
    config = miner_yaml(tmp_path / "conf")
    record_id = one_record(tmp_path / "conf" / "state" / "al")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    shown = tool("sn72_tools.al.cli", "show", str(record_id), "--config", str(config),
                 home=tmp_path, cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert str(record_id) in shown.stdout and "deadline" in shown.stdout
    # $MINER_CONFIG (what pm2.config.js reads) serves as the default, as for the other tools
    listed = tool("sn72_tools.al.cli", "list", home=tmp_path, cwd=elsewhere,
                  env={"MINER_CONFIG": str(config)})
    assert listed.returncode == 0 and str(record_id) in listed.stdout, listed.stderr


def test_sn72_al_follows_the_environment_over_the_file_as_the_miner_does(tmp_path):
    config = miner_yaml(tmp_path)
    one_record(tmp_path / "moved")
    stats = tool("sn72_tools.al.cli", "stats", "--config", str(config), home=tmp_path, cwd=tmp_path,
                 env={"MINER_ACTIVE_LEARNING__DIRECTORY": str(tmp_path / "moved")})
    assert stats.returncode == 0, stats.stderr
    assert str(tmp_path / "moved") in stats.stdout


def test_sn72_al_without_a_store_or_config_says_how_to_name_one(tmp_path):
    done = tool("sn72_tools.al.cli", "stats", home=tmp_path, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "--config" in done.stderr


@pytest.fixture
def offline_miner(tmp_path) -> tuple[Path, Any, Path]:
    wallets = tmp_path / "wallets"
    wallet = ensure_wallet(wallets, "miner")
    metagraph = tmp_path / "metagraph.json"
    write_metagraph_json(metagraph, 72, [Neuron(0, "5Someone", False, 0.0), Neuron(5, wallet.hotkey.ss58_address,
                                                                                   False, 0.0)])
    closed = f"ws://127.0.0.1:{free_port()}"  # dialling the chain here fails (exit 5), and fast
    config = miner_yaml(tmp_path, wallet={"name": "miner", "path": "wallets"},
                        chain={"offline": True, "metagraph_file": "metagraph.json", "network": closed},
                        axon={"external_ip": "127.0.0.1"},
                        natix={"model_url": "someone/sn72-cascade", "base_url": "http://natix.invalid"})
    return config, wallet, metagraph


@pytest.mark.slow
def test_sn72_register_offline_takes_the_uid_from_the_metagraph_file(offline_miner, tmp_path):
    config, wallet, _ = offline_miner
    done = tool("sn72_tools.natix", "--config", str(config), "--dry-run", "--chain-timeout-s", "10", home=tmp_path,
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout[done.stdout.index("{"): done.stdout.rindex("}") + 1])
    assert payload["uid"] == "5" and payload["natix_public_key"] == wallet.hotkey.ss58_address


@pytest.mark.slow
def test_sn72_register_offline_with_the_hotkey_missing_from_the_file_is_not_registered(offline_miner, tmp_path):
    config, _, metagraph = offline_miner
    write_metagraph_json(metagraph, 72, [Neuron(0, "5Someone", False, 0.0)])
    done = tool("sn72_tools.natix", "--config", str(config), "--dry-run", "--chain-timeout-s", "10", home=tmp_path,
                cwd=tmp_path)
    assert done.returncode == 6, done.stderr
    assert str(metagraph) in done.stderr and "connecting" not in done.stderr
