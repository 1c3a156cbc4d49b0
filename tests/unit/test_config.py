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


def test_each_layer_overrides_the_one_below_field_by_field(tmp_path):
    path = write(tmp_path, {"axon": {"port": 1000, "host": "10.0.0.1"}, "wallet": {"name": "file", "hotkey": "f"}})
    env = {"MINER_AXON__PORT": "2000", "MINER_WALLET__NAME": "env"}
    argv = ["--config", str(path), "--axon.port", "3000"]
    miner, _, _ = load_config(argv, environ=env)
    assert (miner.axon.port, miner.axon.host, miner.wallet.name, miner.wallet.hotkey) == (3000, "10.0.0.1", "env", "f")
    miner, _, _ = load_config([*argv, "--set", "axon.port=4000"], environ=env)
    assert miner.axon.port == 4000
    miner, _, _ = load_config(["--config", str(path)], environ=env)
    assert miner.axon.port == 2000 and miner.wallet.name == "env"


def test_values_are_typed_by_the_schema_not_guessed_from_the_text(tmp_path):
    path = write(tmp_path, {"wallet": {"hotkey": 2024}})  # a YAML integer, for a name
    miner, _, _ = load_config(["--config", str(path)], environ={})
    assert miner.wallet.hotkey == "2024"
    miner, _, _ = load_config(
        ["--config", str(path), "--wallet.hotkey", "0042", "--wallet.name", "off", "--set", "guards.min_stake=1e3",
         "--set", 'guards.allowed_hotkeys=["5F1", "5F2"]', "--set", "guards.allow_non_validators=on"],
        environ={"MINER_CHAIN__NETWORK": "true", "MINER_AXON__EXTERNAL_IP": "null"},
    )
    assert miner.wallet.hotkey == "0042" and miner.wallet.name == "off" and miner.chain.network == "true"
    assert miner.guards.min_stake == 1000.0 and miner.guards.allowed_hotkeys == ["5F1", "5F2"]
    assert miner.guards.allow_non_validators is True and miner.axon.external_ip is None


@pytest.mark.parametrize(("argv", "env", "source"), [
    ([], {"MINER_AXON__PORT": "70000"}, "from environment MINER_AXON__PORT"),
    (["--axon.port", "70000"], {}, "from --axon.port"),
    (["--set", "axon.port=70000"], {}, "from --set axon.port=70000"),
    ([], {}, "from file"),
])
def test_an_error_names_field_value_and_source(tmp_path, argv, env, source):
    path = write(tmp_path, {"axon": {"port": 70000 if not argv and not env else 9000}})
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(path), *argv], environ=env)
    text = str(info.value)
    assert "axon.port" in text and "65535" in text and "70000" in text and source in text
    assert text.count("\n") == 1  # the heading and one line: nothing about the layers that were fine


def test_unknown_environment_fields_and_bad_json_are_named(tmp_path):
    path = write(tmp_path, {})
    with pytest.raises(ConfigError, match=r"axon\.prot: Extra inputs.*environment MINER_AXON__PROT"):
        load_config(["--config", str(path)], environ={"MINER_AXON__PROT": "1"})
    with pytest.raises(ConfigError, match=r"guards\.allowed_hotkeys: expects JSON.*--set"):
        load_config(["--config", str(path), "--set", "guards.allowed_hotkeys=a,b"], environ={})
    # MINER_CONFIG (pm2.config.js) and unrelated MINER_ names without a section are not fields
    load_config(["--config", str(path)], environ={"MINER_CONFIG": "x.yaml", "MINER_HOME": "/x"})


def test_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(tmp_path / "absent.yaml")], environ={})
    assert "absent.yaml" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(write(tmp_path, {})), "--cascade", "gone.yaml"], environ={})
    assert "invalid cascade" in str(info.value) and "gone.yaml" in str(info.value) and "\n" not in str(info.value)


def test_both_loops_default_to_uvloop_and_take_the_standard_one_or_refuse_anything_else(tmp_path):
    miner, engine, _ = load_config(["--config", str(write(tmp_path, {}))], environ={})
    assert miner.axon.event_loop == "uvloop" and engine.scheduler.event_loop == "uvloop"
    standard = {"axon": {"event_loop": "asyncio"}, "scheduler": {"event_loop": "asyncio"}}
    miner, engine, _ = load_config(["--config", str(write(tmp_path, standard))], environ={})
    assert miner.axon.event_loop == "asyncio" and engine.scheduler.event_loop == "asyncio"
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(write(tmp_path, {"axon": {"event_loop": "trio"}}))], environ={})
    assert "axon.event_loop" in str(info.value) and "trio" in str(info.value)
