"""Hot reload of the real miner process under load through the real axon: a refitted calibration file (watched)
and a new model (SIGHUP) go into service with no request refused, failed or late, answers after the swap come
from the new cascade, and broken cascades are refused while the serving one keeps answering.

The tiny random models answer near 0.5; calibration biases of -12 and +12 push the old and the new cascade's
answers to opposite ends, so the client can tell which cascade answered each request.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade.calibration import CalibrationFile, ExpertFit, FitSource, LevelFit, digest
from cascade.model_identity import content_identity
from sn72_lab.loadtest import SustainedLoad, Timed, scrape
from sn72_lab.offline import MinerProcess, run_miner
from sn72_lab.tiny_models import build_tiny_vit
from sn72_tools.client import encode_jpeg, synthetic_image
from tests.factories.cascades import cascade_of, level, vit_expert
from tests.factories.dendrites import validator_wallets
from tests.factories.metrics import axon_outcomes

pytestmark = [pytest.mark.slow, pytest.mark.bench]

OLD, NEW = 0.01, 0.99  # below: the old cascade answered; above: the new one
TIMEOUT_S = 9.0  # the validators' timeout
EXTRA = {"guards": {"rate_per_s": 0.0}, "axon": {"max_connections_per_ip": 1024}}


def expert(name: str, model: Path, bias: float = 0.0, **fields: Any) -> dict[str, Any]:
    return vit_expert(model, name, max_batch=8, max_wait_ms=2.0, warmup_batches=1, calibration={"bias": bias},
                      **fields)


def cascade(*experts: dict[str, Any], **top: Any) -> dict[str, Any]:
    # calibrated answers: the test tells the old cascade from the new one by the answer's value
    return cascade_of(level(*experts, name="only"), version="reload-e2e", answer={"policy": "calibrated"}, **top)


def write_calibration(path: Path, expert_name: str, model: Path, bias: float) -> str:
    source = FitSource(dataset="e2e", kind="folders", distortion="native", images=10, counts={"0": 5, "1": 5},
                       fit_images=7, held_out_images=3, split="random", seed=0, max_mcc_loss=0.0)
    fitted = CalibrationFile(
        created="2026-01-01T00:00:00Z", cascade_version="reload-e2e", source=source,
        experts={expert_name: ExpertFit(temperature=1.0, bias=bias, backend="hf_classifier", model=model.name,
                                        weights=content_identity(str(model)))},
        levels=[LevelFit(name="only", weights={expert_name: 1.0}, exit_margin=0.3)],
    )
    text = fitted.to_json()
    path.write_text(text)
    return digest(text.encode())


def payloads(count: int) -> list[str]:
    return [encode_jpeg(synthetic_image(900 + i, (320, 240))) for i in range(count)]


def until(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> float:
    """Wait for an observable state of the miner or the load (log line, answers); the time it was seen."""
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline_s, f"not seen in {timeout_s}s: {what}"
        time.sleep(0.05)
    return time.monotonic()


def lines_with(process: MinerProcess, text: str) -> int:
    return sum(text in line for line in list(process.lines))


def check_every_answer(records: list[Timed], process: MinerProcess) -> None:
    """None refused, failed or late, from the client's side and the miner's."""
    bad = [r for r in records if not r.outcome.ok or r.outcome.latency_s > TIMEOUT_S]
    assert not bad, bad[:5]
    axon = axon_outcomes(process.metrics_port)
    refusals = {k: v for k, v in axon.items()
                if k.startswith(("refused", "late", "closed")) or k in ("answered_prior", "answered_engine_error")}
    assert not any(refusals.values()), refusals


def split(records: list[Timed], trigger_s: float, swapped_s: float) -> tuple[list[Timed], list[Timed], list[Timed]]:
    """(answered before the trigger, in flight during the reload, sent after the swap was logged)."""
    before = [r for r in records if r.done_s < trigger_s]
    across = [r for r in records if r.sent_s <= swapped_s and r.done_s >= trigger_s]
    after = [r for r in records if r.sent_s > swapped_s]
    return before, across, after


def test_a_refitted_calibration_file_is_served_under_load_without_losing_a_request(tmp_path):
    wallets, miner, callers = validator_wallets(tmp_path, 2)
    model = build_tiny_vit(tmp_path / "models" / "vit-a")
    write_calibration(tmp_path / "cal.json", "vit", model, bias=-12.0)
    extra = {**EXTRA, "reload": {"watch": True, "watch_settle_s": 0.2}}
    with run_miner(tmp_path, wallets, miner, cascade(expert("vit", model), calibration="cal.json"),
                   extra=extra) as process:
        load = SustainedLoad(process.port, process.hotkey, callers, payloads(24), TIMEOUT_S, concurrency=8).start()
        try:
            until(lambda: len(load.records) >= 40, "40 answers before the change")
            trigger_s = time.monotonic()
            new_hash = write_calibration(tmp_path / "cal.json", "vit", model, bias=12.0)  # what sn72-eval --fit does
            swapped_s = until(lambda: lines_with(process, "reload (file change) done") == 1, "the reload's log line")
            until(lambda: load.answered_since(swapped_s) >= 40, "40 answers after the swap")
        finally:
            records = load.stop()
        check_every_answer(records, process)
        metrics = scrape(process.metrics_port)
    before, across, after = split(records, trigger_s, swapped_s)
    assert before and all(r.outcome.prediction < OLD for r in before)
    assert len(across) >= 8  # every caller had a request in flight while the file changed
    assert after and all(r.outcome.prediction > NEW for r in after)  # the same images: the cache was cleared
    assert metrics["sn72_miner_reloads_total{outcome=calibration}"] == 1.0
    [served] = [key for key in metrics if key.startswith("sn72_miner_cascade_info{")]  # the new version alone
    assert served.startswith(f"sn72_miner_cascade_info{{calibration=cal.json,release=0.1.0,version=reload-e2e+cal."
                             f"{new_hash}+id."), served  # the served version: the models' digest after the hash
    assert lines_with(process, "loaded nothing") == 1  # no model was loaded


def test_a_new_model_is_served_under_load_and_broken_cascades_are_refused_while_it_keeps_answering(tmp_path):
    wallets, miner, callers = validator_wallets(tmp_path, 2)
    old_model = build_tiny_vit(tmp_path / "models" / "vit-a", seed=0)
    new_model = build_tiny_vit(tmp_path / "models" / "vit-b", seed=1)
    cascade_file = tmp_path / "cascade.yaml"  # run_miner writes it there
    with run_miner(tmp_path, wallets, miner, cascade(expert("vit-a", old_model, bias=-12.0)), extra=EXTRA) as process:
        load = SustainedLoad(process.port, process.hotkey, callers, payloads(24), TIMEOUT_S, concurrency=8).start()
        refused = "reload (SIGHUP) refused_"

        def reload_with(content: dict[str, Any] | str, line: str, count: int = 1) -> float:
            cascade_file.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
            process.process.send_signal(signal.SIGHUP)
            return until(lambda: lines_with(process, line) == count, line)

        try:
            until(lambda: len(load.records) >= 40, "40 answers before the reload")
            trigger_s = time.monotonic()
            swapped_s = reload_with(cascade(expert("vit-b", new_model, bias=12.0)), "reload (SIGHUP) done")
            until(lambda: lines_with(process, "freed vit-a@cpu") == 1, "the old model freed")
            until(lambda: load.answered_since(swapped_s) >= 40, "40 answers after the swap")
            reload_with("levels: [unclosed", refused, 1)
            reload_with(cascade(expert("vit-c", tmp_path / "models" / "missing", bias=-12.0)), refused, 2)
            reload_with(cascade(expert("vit-b", new_model, bias=-12.0, input_size=64)), refused, 3)  # fails warm-up
            last_s = time.monotonic()
            until(lambda: load.answered_since(last_s) >= 20, "20 answers after the refusals")
        finally:
            records = load.stop()
        check_every_answer(records, process)
        metrics = scrape(process.metrics_port)
    before, across, after = split(records, trigger_s, swapped_s)
    assert before and all(r.outcome.prediction < OLD for r in before)
    assert len(across) >= 8
    assert after and all(r.outcome.prediction > NEW for r in after)  # vit-b, through every refused reload
    for outcome in ("models", "refused_invalid", "refused_load", "refused_warmup"):
        assert metrics[f"sn72_miner_reloads_total{{outcome={outcome}}}"] == 1.0, outcome
    assert metrics["sn72_miner_last_reload{sn72_miner_last_reload=refused_warmup}"] == 1.0
    assert metrics["sn72_miner_cascades_retiring"] == 0.0
    errors = [line for line in process.lines if refused in line]
    assert "cannot read config" in errors[0] and "missing" in errors[1] and "doesn't match model" in errors[2]
    assert all("still serving reload-e2e" in line for line in errors)
    answered = sum(v for k, v in metrics.items() if k.startswith("sn72_miner_axon_total{outcome=answered_"))
    assert answered == len(records)  # the miner answered exactly the requests the client sent
