"""The event loop setting: uvloop by default on both loops, the standard one on request, a clear error without it."""

from __future__ import annotations

import asyncio
import sys

import pytest
import yaml

from cascade.event_loop import new_event_loop, uvicorn_loop
from neurons.config import ConfigError, load_config


def _config(folder, miner):
    (folder / "cascade.yaml").write_text(yaml.safe_dump(
        {"levels": [{"name": "l1", "experts": [{"name": "vit", "backend": "hf_classifier", "model": "./m"}]}]}))
    (folder / "miner.yaml").write_text(yaml.safe_dump({"cascade_file": "cascade.yaml", **miner}))
    return ["--config", str(folder / "miner.yaml")]


def test_both_loops_default_to_uvloop_and_take_the_standard_one_or_refuse_anything_else(tmp_path):
    miner, engine, _ = load_config(_config(tmp_path, {}), environ={})
    assert miner.axon.event_loop == "uvloop" and engine.scheduler.event_loop == "uvloop"
    miner, engine, _ = load_config(_config(tmp_path, {"axon": {"event_loop": "asyncio"},
                                                      "scheduler": {"event_loop": "asyncio"}}), environ={})
    assert miner.axon.event_loop == "asyncio" and engine.scheduler.event_loop == "asyncio"
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, {"axon": {"event_loop": "trio"}}), environ={})
    assert "axon.event_loop" in str(info.value) and "trio" in str(info.value)


def test_each_kind_runs_a_coroutine_on_its_own_loop_type():
    for kind in ("uvloop", "asyncio"):
        loop = new_event_loop(kind)
        try:
            assert loop.run_until_complete(asyncio.sleep(0, result=kind)) == kind
            assert type(loop).__module__.split(".")[0] == kind
        finally:
            loop.close()


def test_uvloop_missing_is_an_error_that_says_how_to_do_without_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets where it is not installed
    for make in (new_event_loop, uvicorn_loop):
        with pytest.raises(RuntimeError, match="event_loop: asyncio"):
            make("uvloop")
    assert uvicorn_loop("asyncio") == "asyncio"
