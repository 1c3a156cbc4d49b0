"""Mistakes an operator makes get one line that names the fix, from the real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, *args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MINER_")}
    environ.update({"HOME": str(home), "PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=home, env=environ, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_sn72_query_with_a_missing_wallet_is_one_line_naming_the_key_file_and_the_fix(tmp_path):
    wallets = tmp_path / "wallets"
    done = run("sn72_tools.query", "--wallet.name", "validator", "--wallet.path", str(wallets), "--miner",
               "127.0.0.1:9", "--miner-hotkey", "5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX", "--synthetic", "1",
               home=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(wallets / "validator" / "hotkeys" / "default") in lines[0]
    assert "btcli wallet create --wallet.name validator --wallet.hotkey default" in lines[0]


def write_miner(folder: Path, miner: dict, cascade: dict) -> Path:
    (folder / "cascade.yaml").write_text(yaml.safe_dump(cascade))
    path = folder / "miner.yaml"
    path.write_text(yaml.safe_dump({"cascade_file": "cascade.yaml", **miner}))
    return path


CASCADE = {"levels": [{"name": "fast", "experts": [{"name": "vit", "backend": "hf_classifier", "model": "m"}]}]}


@pytest.mark.slow
def test_a_typo_in_a_miner_key_is_answered_with_the_field_it_meant(tmp_path):
    config = write_miner(tmp_path, {"axon": {"prot": 8091}}, CASCADE)
    done = run("neurons.miner", "--config", str(config), home=tmp_path, env={"MINER_WALLET__HOTKY": "h"})
    assert done.returncode == 2
    assert "axon.prot: Extra inputs are not permitted; did you mean 'port'?" in done.stderr
    assert "wallet.hotky: Extra inputs are not permitted; did you mean 'hotkey'?" in done.stderr
    assert "environment MINER_WALLET__HOTKY" in done.stderr


@pytest.mark.slow
def test_cascade_errors_name_the_expert_and_level_and_suggest_the_key(tmp_path):
    cascade = {"levels": [
        {"name": "fast", "experts": [{"name": "vit", "backend": "hf_classifier", "model": "m"}]},
        {"name": "slow", "exit_margn": 0.2, "experts": [
            {"name": "clip", "backend": "zero_shot", "model": "m"},
            {"name": "owl", "backend": "owlv2", "model": "m", "input_size": 3, "max_bach": 4}]}]}
    config = write_miner(tmp_path, {}, cascade)
    done = run("neurons.miner", "--config", str(config), home=tmp_path)
    assert done.returncode == 2
    err = done.stderr
    assert "levels.1.experts.1.input_size: Input should be greater than or equal to 16 (given: 3; expert 'owl' of " \
           "level 'slow')" in err
    assert "levels.1.experts.1.max_bach: Extra inputs are not permitted; did you mean 'max_batch'?" in err
    assert "levels.1.exit_margn: Extra inputs are not permitted; did you mean 'exit_margin'? (given: 0.2; level " \
           "'slow')" in err
