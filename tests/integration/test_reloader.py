"""The miner's reload trigger (neurons/reload.py) over a real engine and real cascade files.

Experts are fakes chosen by name through the engine's factory hook; everything else is real: the
YAML and calibration files, their validation, the watch with its settle time (driven by explicit
clock values), the engine's reload, and the prometheus_client metrics in a registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from cascade.calibration import CalibrationFile, ExpertFit, FitSource, LevelFit
from cascade.config import EngineConfig, load_cascade
from cascade.consensus import logit, sigmoid
from cascade.engine import Engine
from cascade.model_identity import content_identity
from cascade.placement import GIB, DeviceInfo
from neurons.reload import Reloader
from tests.factories.engine import FakeExpert, make_job, wait_for


def cascade_yaml(folder: Path, bias: float = 0.0, expert: str = "a", calibration: str | None = None,
                 **fields: Any) -> Path:
    spec = {"name": expert, "backend": "hf_classifier", "model": f"fake/{expert}", "device": "cpu",
            "warmup_batches": 0, "expected_latency_ms": 5.0, "calibration": {"bias": bias}, **fields}
    data: dict[str, Any] = {"version": "v1", "levels": [{"name": "only", "exit_margin": 0.3, "experts": [spec]}]}
    if calibration is not None:
        data["calibration"] = calibration
    path = folder / "cascade.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def calibration_file(path: Path, bias: float) -> Path:
    source = FitSource(dataset="test", kind="folders", distortion="native", images=10, counts={"0": 5, "1": 5},
                       fit_images=7, held_out_images=3, split="random", seed=0, max_mcc_loss=0.0)
    fitted = CalibrationFile(created="2026-01-01T00:00:00Z", cascade_version="v1", source=source,
                             experts={"a": ExpertFit(temperature=1.0, bias=bias, backend="hf_classifier",
                                                     model="fake/a", weights=content_identity("fake/a"))},
                             levels=[LevelFit(name="only", weights={"a": 1.0}, exit_margin=0.3)])
    path.write_text(fitted.to_json())
    return path


def started(path: Path) -> Engine:
    engine = Engine(EngineConfig(cascade=load_cascade(path)),
                    expert_factory=lambda config, device: FakeExpert(config, device, answer=lambda image: 0.6))
    engine.start()
    return engine


def answer(engine: Engine, mark: int = 1) -> float:
    return engine.submit(make_job(mark=mark)).result(10).probability


def finished(reloader: Reloader, count: int):
    wait_for(lambda: reloader.completed == count and not reloader.busy(), timeout_s=30)
    assert reloader.last is not None
    return reloader.last


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_a_changed_file_is_reloaded_once_it_has_settled(tmp_path: Path):
    path = cascade_yaml(tmp_path)
    engine = started(path)
    registry = CollectorRegistry()
    reloader = Reloader(engine, path, watch=True, watch_settle_s=1.0, registry=registry)
    try:
        assert not reloader.poll(now_s=0.0) and not reloader.busy()
        cascade_yaml(tmp_path, bias=4.0)
        reloader.poll(now_s=10.0)  # seen, not yet settled
        reloader.poll(now_s=10.9)
        assert reloader.completed == 0 and not reloader.busy()
        reloader.poll(now_s=11.0)
        outcome = finished(reloader, 1)
        assert outcome.outcome == "calibration" and outcome.reason == "file change"
        assert answer(engine) == pytest.approx(sigmoid(logit(0.6) + 4.0))
        assert sample(registry, "sn72_miner_reloads_total", outcome="calibration") == 1.0
        assert sample(registry, "sn72_miner_last_reload", sn72_miner_last_reload="calibration") == 1.0
        assert sample(registry, "sn72_miner_last_reload_duration_seconds") == pytest.approx(outcome.seconds)
        reloader.poll(now_s=20.0)
        reloader.poll(now_s=30.0)
        assert reloader.completed == 1  # the same files again: nothing to do
    finally:
        engine.close()


def test_a_refitted_calibration_file_goes_in_service_with_its_hash_in_the_version(tmp_path: Path):
    calibration = calibration_file(tmp_path / "cal.json", bias=-2.0)
    path = cascade_yaml(tmp_path, calibration="cal.json")
    engine = started(path)
    registry = CollectorRegistry()
    reloader = Reloader(engine, path, watch=True, watch_settle_s=0.0, registry=registry)
    try:
        first = engine.config.cascade.version
        assert first.startswith("v1+cal.") and answer(engine) == pytest.approx(sigmoid(logit(0.6) - 2.0))
        calibration_file(calibration, bias=3.0)
        reloader.poll(now_s=1.0)
        reloader.poll(now_s=1.0)
        outcome = finished(reloader, 1)
        assert outcome.outcome == "calibration", outcome
        second = engine.config.cascade.version
        assert second.startswith("v1+cal.") and second != first
        assert answer(engine) == pytest.approx(sigmoid(logit(0.6) + 3.0))
        assert sample(registry, "sn72_miner_cascade_info", version=second, release="0.1.0",
                      calibration="cal.json") == 1.0
    finally:
        engine.close()


def test_the_state_names_the_reload_that_covers_a_request_and_the_build_info_follows_the_swap(tmp_path: Path):
    from cascade.process_metrics import publish_build_info

    calibration = calibration_file(tmp_path / "cal.json", bias=-2.0)
    path = cascade_yaml(tmp_path, calibration="cal.json")
    engine = started(path)
    registry = CollectorRegistry()
    reloader = Reloader(engine, path, watch=True, watch_settle_s=0.0, registry=registry,
                        build_info=publish_build_info(registry, engine.config.cascade))
    try:
        assert reloader.state()["asked"] == 0 and reloader.state()["last_reload"] is None
        calibration_file(calibration, bias=3.0)
        reloader.request("SIGHUP")
        assert reloader.state()["asked"] == 1  # counted when asked, before any reload starts
        reloader.poll()
        finished(reloader, 1)
        reloader.poll(now_s=5.0)  # the watch sees the files as the reload read them: nothing more to do
        reloader.poll(now_s=6.0)
        state = reloader.state()
        assert state["asked"] == 1 and state["last_reload"]["covers"] == 1 and not state["reloading"]
        assert state["serving"] == engine.config.cascade.version and "+id." in state["serving"]
        builds = [s for m in registry.collect() if m.name == "sn72_miner_build" for s in m.samples]
        assert [s.labels["cascade_version"] for s in builds] == [state["serving"]]  # the start-up label set is gone
        calibration_file(calibration, bias=1.0)  # a watched change asks too
        reloader.poll(now_s=7.0)
        reloader.poll(now_s=7.0)
        finished(reloader, 2)
        assert reloader.state()["asked"] == 2 and reloader.state()["last_reload"]["covers"] == 2
    finally:
        engine.close()


@pytest.mark.parametrize(("content", "says"), [
    ("levels: [unclosed", "cannot read config"),
    (None, "levels.0.exit_margin: Input should be less than or equal to 0.5"),
])
def test_an_invalid_cascade_file_is_refused_in_one_line_and_the_old_one_keeps_serving(tmp_path: Path, content, says):
    path = cascade_yaml(tmp_path)
    engine = started(path)
    registry = CollectorRegistry()
    reloader = Reloader(engine, path, registry=registry)
    try:
        if content is None:
            content = path.read_text().replace("exit_margin: 0.3", "exit_margin: 0.9")
        path.write_text(content)
        reloader.request("SIGHUP")
        reloader.poll()
        outcome = finished(reloader, 1)
        assert outcome.outcome == "refused_invalid" and says in outcome.message and "\n" not in outcome.message
        assert outcome.message.endswith("still serving v1")
        assert answer(engine) == pytest.approx(0.6)
        assert sample(registry, "sn72_miner_reloads_total", outcome="refused_invalid") == 1.0
        assert sample(registry, "sn72_miner_cascade_info", version="v1", release="0.1.0", calibration="none") == 1.0
    finally:
        engine.close()


def test_a_cascade_that_fits_only_without_the_serving_one_asks_for_a_drain_and_restart(tmp_path: Path):
    # A GPU simulated by the engine's device hook: the serving expert is planned there at 30 GB.
    gpu = [DeviceInfo("cuda:0", total_bytes=80 * GIB, free_bytes=45 * GIB)]
    path = cascade_yaml(tmp_path, device="cuda:0", memory_gb=30.0)
    engine = Engine(EngineConfig(cascade=load_cascade(path)),
                    expert_factory=lambda config, device: FakeExpert(config, device, answer=lambda image: 0.6))
    engine.devices = lambda: gpu
    engine.start()
    try:
        cascade_yaml(tmp_path, expert="big", device="cuda:0", memory_gb=60.0)
        polite = Reloader(engine, path)
        polite.request()
        assert not polite.poll()
        outcome = finished(polite, 1)
        assert outcome.outcome == "refused_placement" and "'big' needs 60.0 GB on cuda:0" in outcome.message
        assert not polite.poll()  # drain_restart is off: keep serving the old cascade
        restarting = Reloader(engine, path, drain_restart=True)
        restarting.request()
        restarting.poll()
        assert finished(restarting, 1).outcome == "refused_placement"
        assert restarting.poll() and "draining" in restarting.last.message
        assert answer(engine) == pytest.approx(0.6)  # still serving until the miner drains
    finally:
        engine.close()
