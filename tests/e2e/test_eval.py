"""`sn72-eval` end to end: tiny models through the real engine, a generated folder, fit, serve, bad input."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cascade import consensus
from cascade.config import SchedulerConfig, load_cascade
from cascade.engine import Engine
from cascade.request import Job
from neurons.config import load_config
from sn72_lab.tiny_models import build_tiny_clip, build_tiny_vit
from sn72_tools.evaluation import cli, record, replay
from sn72_tools.evaluation.scoring import mcc_from_confusion
from sn72_tools.evaluation.synthetic import make_labelled_folder

pytestmark = pytest.mark.slow

IMAGES = 80
METRICS = {"n", "positives", "mcc", "accuracy", "precision", "recall", "roc_auc", "brier", "ece", "confusion",
           "notes", "reward"}


def write_cascade(root: Path, name: str = "cascade.yaml", calibration: str | None = None) -> Path:
    expert = {"device": "cpu", "max_batch": 8, "max_wait_ms": 2, "warmup_batches": 1}
    cascade = {
        "version": "e2e-1",
        "levels": [
            {"name": "vit", "exit_margin": 0.3, "experts": [
                {"name": "tiny-vit", "backend": "hf_classifier", "model": "./models/tiny-vit",
                 "options": {"positive_labels": ["Roadwork"]}, **expert}]},
            {"name": "clip", "exit_margin": 0.5, "experts": [
                {"name": "tiny-clip", "backend": "zero_shot", "model": "./models/tiny-clip", **expert}]},
        ],
    }
    if calibration:
        cascade["calibration"] = calibration
    path = root / name
    path.write_text(yaml.safe_dump(cascade, sort_keys=False))
    return path


def run_cli(root: Path, data: Path, *extra: str, out: str = "out") -> int:
    return cli.main([str(data), "--cascade", str(root / "cascade.yaml"), "--out", str(root / out),
                     "--cache", str(root / "cache"), "--reward-trials", "300", "--no-progress", *extra])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    build_tiny_vit(root / "models" / "tiny-vit")
    build_tiny_clip(root / "models" / "tiny-clip")
    write_cascade(root)
    make_labelled_folder(root / "set", IMAGES, seed=3)
    (root / "set" / "1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    # 56 fit images: below the default floor of 200, allowed here to see the tool's whole path quickly
    assert run_cli(root, root / "set", "--fit", "--latency-sample", "6", "--min-fit-images", "40") == 0
    return root, json.loads((root / "out" / "report.json").read_text())


def test_every_report_field_is_present_and_consistent(fitted):
    root, report = fitted
    assert report["dataset"]["images"] == IMAGES and report["dataset"]["counts"] == {"0": 40, "1": 40}
    assert report["dataset"]["skipped_count"] == 1
    skipped = report["dataset"]["skipped"][0]
    assert skipped["name"] == "1/broken.jpg" and skipped["reason"].startswith("image: ")  # the engine's refusal
    assert report["recording"]["inferred"] == IMAGES and report["recording"]["seconds_per_1000_images"] > 0
    assert set(report["recording"]["expert_seconds_per_image"]) == {"tiny-vit", "tiny-clip"}
    assert report["evaluated_on"].startswith("held out: 24 of 80 images (30%, stratified, seed 0)")
    assert list(report["evaluations"]) == ["before (as configured)", "after (fitted)"]
    for summary in report["evaluations"].values():
        blocks = [*summary["experts"].values(), *summary["levels"], summary["deployed"]]
        for block in blocks:
            assert set(block) >= METRICS
            c = block["confusion"]
            assert c["tn"] + c["fp"] + c["fn"] + c["tp"] == block["n"] == 24
            assert block["accuracy"] == pytest.approx((c["tn"] + c["tp"]) / block["n"])
            assert block["mcc"] == pytest.approx(mcc_from_confusion(c["tn"], c["fp"], c["fn"], c["tp"]))
            assert 0.0 <= block["reward"]["p5"] <= block["reward"]["mean"] <= 1.0
        deployed = summary["deployed"]
        assert sum(deployed["exit_levels"].values()) == 24
        assert 0 < deployed["expert_seconds_per_image"] <= deployed["all_levels_expert_seconds_per_image"]
    latency = report["latency"]
    assert latency["sample"] == 6 and latency["late"] == 0 and sum(latency["exit_levels"].values()) == 6
    assert 0 < latency["mean_ms"] <= latency["p99_ms"]
    for name in ("reliability.png", "cost_vs_mcc.png"):
        assert (root / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (root / "out" / "report.txt").read_text()
    assert "deployed cascade" in table and "skipped 1/broken.jpg: image: " in table
    assert f"candidate: {root / 'out' / 'candidate.yaml'}" in table and "nothing served changed" in table
    assert "sn72-promote --cascade" in table and "structure: " in table and "temperature " in table


def test_the_fit_writes_a_candidate_and_never_the_served_cascade(fitted, capsys):
    root, _ = fitted
    assert yaml.safe_load((root / "cascade.yaml").read_text()).get("calibration") is None
    assert "release" not in yaml.safe_load((root / "cascade.yaml").read_text())  # nothing bumped
    calibration = json.loads((root / "out" / "calibration.json").read_text())
    assert calibration["format"] == 2 and len(calibration["source"]["fit_sha256"]) == 56
    assert all(fit["weights"].startswith("sha256:") for fit in calibration["experts"].values())
    assert set(calibration["report"]) >= {"structure", "parameters", "margins", "settings"}
    # a served cascade that already names a calibration is never overwritten by a fit
    served = write_cascade(root, "serving.yaml", calibration="out/calibration.json")
    before = (root / "out" / "calibration.json").read_bytes()
    argv = [str(root / "set"), "--cascade", str(served), "--out", str(root / "o2"), "--cache", str(root / "cache"),
            "--fit", "--min-fit-images", "40", "--latency-sample", "0", "--no-progress",
            "--calibration-out", str(root / "out" / "calibration.json")]
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert "never the calibration the cascade serves" in capsys.readouterr().err
    assert (root / "out" / "calibration.json").read_bytes() == before and not (root / "o2").exists()


def test_the_candidate_is_served_through_the_normal_config_path_exactly_as_fitted(fitted):
    root, report = fitted
    miner = root / "miner.yaml"
    miner.write_text(yaml.safe_dump({"cascade_file": "out/candidate.yaml"}))
    _, engine_config, _ = load_config(["--config", str(miner)], environ={})
    cascade = engine_config.cascade
    assert cascade.version == report["fit"]["fitted_version"] and cascade.version.startswith("e2e-1+cal.")
    engine_config.scheduler = SchedulerConfig(cache_size=0)
    # What the fit predicts for each image, replayed from the raw outputs the eval cached.
    cache = record.OutputCache(root / "cache")
    identities = {e.name: record.model_identity(e) for e in cascade.experts()}
    files = sorted((root / "set").rglob("*.jpg"))[:16]
    files = [f for f in files if f.name != "broken.jpg"]
    outputs = []
    for file in files:
        known = cache.get(hashlib.sha256(file.read_bytes()).hexdigest(), identities)
        assert known is not None
        outputs.append([known["tiny-vit"], known["tiny-clip"]])
    cache.close()
    pooling = consensus.Pooling.from_config(cascade)
    levels = replay.level_probabilities(cascade, pooling, ["tiny-vit", "tiny-clip"], np.array(outputs))
    exits = replay.exit_levels(replay.pooling_margins(pooling), levels)
    expected = replay.answers_at(levels, exits)
    engine = Engine(engine_config)
    engine.start()
    try:
        for file, want, exit_level in zip(files, expected, exits, strict=True):
            now = time.monotonic()
            payload = base64.b64encode(file.read_bytes()).decode()
            result = engine.submit(Job(payload=payload, arrival_s=now, deadline_s=now + 30)).result(60)
            assert result.probability == pytest.approx(want, abs=1e-5), file.name
            assert result.levels_run == exit_level + 1
    finally:
        engine.close()
    as_configured = load_cascade(root / "cascade.yaml")
    unfitted = replay.level_probabilities(as_configured, consensus.Pooling.from_config(as_configured),
                                          ["tiny-vit", "tiny-clip"], np.array(outputs))
    assert np.abs(unfitted[:, -1] - levels[:, -1]).max() > 1e-3  # the calibration did change the answers


def test_a_rerun_takes_every_output_from_the_cache_and_loads_no_model(fitted):
    root, _ = fitted
    assert run_cli(root, root / "set", "--latency-sample", "0", out="rerun") == 0
    report = json.loads((root / "rerun" / "report.json").read_text())
    assert report["recording"]["inferred"] == 0 and report["recording"]["cached"] == IMAGES
    assert report["recording"]["startup_s"] == 0.0
    assert report["evaluated_on"] == f"all {IMAGES} images (no fit in this run)"
    assert "no latency sample" in " ".join(report["dataset"]["notes"])


def test_one_class_only_says_mcc_is_undefined_and_cannot_be_fitted(fitted, capsys):
    root, _ = fitted
    shutil.copytree(root / "set" / "1", root / "positives" / "1", ignore=shutil.ignore_patterns("broken.jpg"))
    assert run_cli(root, root / "positives", "--latency-sample", "0", out="one") == 0
    deployed = json.loads((root / "one" / "report.json").read_text())["evaluations"]["as configured"]["deployed"]
    assert deployed["mcc"] is None and deployed["reward"] is None
    assert "MCC undefined: the labels hold only class 1 (validators would score 0)" in deployed["notes"]
    assert "undef" in (root / "one" / "report.txt").read_text()
    capsys.readouterr()
    assert run_cli(root, root / "positives", "--latency-sample", "0", "--fit", out="one-fit") == 2
    assert "error: fitting needs at least 200 labelled images (50 of each class)" in capsys.readouterr().err


def test_bad_input_is_a_one_line_error(fitted, tmp_path, capsys):
    root, _ = fitted

    def error_of(*args: str) -> str:
        capsys.readouterr()
        assert run_cli(root, *args, "--latency-sample", "0", out=str(tmp_path / "o")) == 2  # type: ignore[arg-type]
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        return err

    (tmp_path / "empty" / "0").mkdir(parents=True)
    assert "no labelled images in it" in error_of(tmp_path / "empty")
    (tmp_path / "labels.csv").write_text("path,label\nset/0/00000.jpg,0\nset/1/00001.jpg,yes-ish\n")
    assert "labels.csv:3: label 'yes-ish' is not 0/1" in error_of(tmp_path / "labels.csv")
    for i in range(2):
        (tmp_path / "corrupt" / str(i)).mkdir(parents=True)
        (tmp_path / "corrupt" / str(i) / "x.jpg").write_bytes(b"garbage")
    err = error_of(tmp_path / "corrupt", "--distort", "blur")
    assert "no image could be run (2 skipped; first: 0/x.jpg: cannot read: not a readable image" in err


def test_help_has_no_side_effects(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0 and "--fit" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_an_active_learning_store_and_a_saved_dataset_are_evaluated_directly(fitted):
    import datasets as hf

    from cascade.observers.al_store import ALStore, Reason, Sample

    root, _ = fitted
    files = sorted((root / "set" / "0").glob("*.jpg"))[:6] + sorted((root / "set" / "1").glob("0*.jpg"))[:6]
    labels = [int(f.parent.name) for f in files]
    with ALStore(root / "al") as store:
        for i, (file, label) in enumerate(zip(files, labels, strict=True)):
            store.add(Sample(image=file.read_bytes(), reason=Reason.LABELLED if i else Reason.UNCERTAIN,
                             created_at=1000.0 + i, label=label if i else None))
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=["none", "roadwork"])})
    hf.Dataset.from_dict({"image": [str(f) for f in files], "label": labels}, features=features).save_to_disk(
        str(root / "saved"))
    for data, kind, images in ((root / "al", "al:", 11), (root / "saved", "hf:", 12)):
        assert run_cli(root, data, "--latency-sample", "0", out=f"out-{data.name}") == 0
        report = json.loads((root / f"out-{data.name}" / "report.json").read_text())
        assert report["dataset"]["source"].startswith(kind) and report["dataset"]["images"] == images
        assert report["recording"]["cached"] == images  # the same images as the folder: no model run
        deployed = report["evaluations"]["as configured"]["deployed"]
        assert deployed["n"] == images and deployed["positives"] == 6 and deployed["mcc"] is not None
    assert "1 unlabelled records left out" in " ".join(
        json.loads((root / "out-al" / "report.json").read_text())["dataset"]["notes"])
