"""Configuration errors name the field and the allowed range; overrides apply in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neurons.config import ConfigError, load_config

CASCADE = {"levels": [{"name": "l1", "experts": [{"name": "vit", "backend": "hf_classifier", "model": "./m"}]}]}


def write(folder: Path, miner: dict, cascade: dict | None = None) -> Path:
    (folder / "cascade.yaml").write_text(yaml.safe_dump(cascade or CASCADE))
    path = folder / "miner.yaml"
    path.write_text(yaml.safe_dump({"cascade_file": "cascade.yaml", **miner}))
    return path


def test_a_valid_config_loads_with_paths_resolved(tmp_path):
    miner, engine, check = load_config(["--config", str(write(tmp_path, {"axon": {"port": 9000}}))], environ={})
    assert miner.axon.port == 9000 and not check
    assert engine.cascade.levels[0].experts[0].model == str((tmp_path / "m").resolve())
    assert miner.wallet.path.endswith(".bittensor/wallets") and Path(miner.wallet.path).is_absolute()
    relative, _, _ = load_config(["--config", str(write(tmp_path, {"wallet": {"path": "../w"}}))], environ={})
    assert relative.wallet.path == str((tmp_path.parent / "w").resolve())


def test_an_out_of_range_value_names_the_field_and_the_range(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(write(tmp_path, {"axon": {"port": 70000}}))], environ={})
    assert "axon.port" in str(info.value) and "65535" in str(info.value) and "70000" in str(info.value)


def test_a_bad_cascade_value_names_the_nested_field(tmp_path):
    cascade = {"levels": [{"name": "l1", "exit_margin": 0.9,
                           "experts": [{"name": "vit", "backend": "hf_classifier", "model": "m"}]}]}
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(write(tmp_path, {}, cascade))], environ={})
    assert "levels.0.exit_margin" in str(info.value) and "0.5" in str(info.value)


def test_unknown_keys_and_bad_backends_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"axon\.prot"):
        load_config(["--config", str(write(tmp_path, {"axon": {"prot": 1}}))], environ={})
    cascade = {"levels": [{"name": "l1", "experts": [{"name": "v", "backend": "magic", "model": "m"}]}]}
    with pytest.raises(ConfigError, match="backend"):
        load_config(["--config", str(write(tmp_path, {}, cascade))], environ={})


def test_cross_field_errors_name_both_values(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(write(tmp_path, {"deadline": {"timeout_cap_s": 2, "margin_s": 3}}))], environ={})
    assert "margin_s (3.0)" in str(info.value) and "timeout_cap_s (2.0)" in str(info.value)
    with pytest.raises(ConfigError, match="external_ip"):
        load_config(["--config", str(write(tmp_path, {"chain": {"offline": True, "metagraph_file": "m.json"}}))],
                    environ={})


def test_overrides_apply_yaml_then_environment_then_flags_then_set(tmp_path):
    path = write(tmp_path, {"axon": {"port": 1000}, "wallet": {"name": "yaml"}})
    env = {"MINER_AXON__PORT": "2000", "MINER_WALLET__NAME": "env", "MINER_WALLET__HOTKEY": "hk-env"}
    miner, _, _ = load_config(["--config", str(path), "--axon.port", "3000", "--set", "wallet.name=cli",
                               "--offline", "--set", "chain.metagraph_file=mg.json",
                               "--axon.external_ip", "127.0.0.1"], environ=env)
    assert miner.axon.port == 3000 and miner.wallet.name == "cli" and miner.wallet.hotkey == "hk-env"
    assert miner.chain.offline and miner.chain.metagraph_file == (tmp_path / "mg.json").resolve()


def test_the_shipped_configs_validate():
    root = Path(__file__).resolve().parents[2]
    miner, engine, _ = load_config(["--config", str(root / "config/miner.demo.yaml")], environ={})
    assert miner.chain.offline and len(engine.cascade.levels) >= 1
    from cascade.config import load_cascade

    production = load_cascade(root / "config/cascade.production.yaml")
    assert {e.backend for e in production.experts()} >= {"hf_classifier", "zero_shot", "owlv2", "vlm_vllm"}
