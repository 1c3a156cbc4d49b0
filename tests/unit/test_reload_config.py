"""The `reload` section of the miner config: off by default, set by YAML, environment, `--set` or `--drain-restart`."""

from __future__ import annotations

import pytest
import yaml

from neurons.config import ConfigError, load_config

CASCADE = {"levels": [{"name": "l1", "experts": [{"name": "vit", "backend": "hf_classifier", "model": "./m"}]}]}


def miner_yaml(folder, **miner):
    (folder / "cascade.yaml").write_text(yaml.safe_dump(CASCADE))
    path = folder / "miner.yaml"
    path.write_text(yaml.safe_dump({"cascade_file": "cascade.yaml", **miner}))
    return str(path)


def test_reload_is_signal_only_by_default_and_each_layer_can_turn_its_options_on(tmp_path):
    default, _, _ = load_config(["--config", miner_yaml(tmp_path)], environ={})
    assert (default.reload.watch, default.reload.drain_restart, default.reload.watch_settle_s) == (False, False, 1.0)
    flagged, _, _ = load_config(["--config", miner_yaml(tmp_path), "--drain-restart"], environ={})
    assert flagged.reload.drain_restart and not flagged.reload.watch
    from_env, _, _ = load_config(["--config", miner_yaml(tmp_path)], environ={"MINER_RELOAD__WATCH": "true"})
    assert from_env.reload.watch
    from_yaml, _, _ = load_config(["--config", miner_yaml(tmp_path, reload={"watch_settle_s": 2.5})], environ={})
    assert from_yaml.reload.watch_settle_s == 2.5


def test_a_bad_reload_value_names_the_field(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(["--config", miner_yaml(tmp_path), "--set", "reload.watch_settle_s=-1"], environ={})
    assert "reload.watch_settle_s" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(["--config", miner_yaml(tmp_path, reload={"wacth": True})], environ={})
    assert "reload.wacth" in str(info.value)
