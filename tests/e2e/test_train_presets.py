"""The training presets end to end on tiny random-weight stand-ins of their hub models (sn72_lab/preset_models.py),
loaded through the loader a hub id takes: each preset trains a few steps with its recipe (one with synthetic images
mixed in); the ensemble preset trains both members, fits the level holding them and is judged by sn72-promote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from sn72_lab import ensemble_recipe, training_bench
from sn72_lab.preset_models import build_for_preset, single_presets
from sn72_tools.training import cli
from sn72_tools.training.recipe import ENSEMBLES, PRESETS
from sn72_tools.training.synthetic import make_cone_folder

pytestmark = pytest.mark.slow

FEW_STEPS = ["--epochs", "1", "--batch-size", "16", "--patience", "0", "--no-eval", "--no-progress"]


def _hashes(folder: Path) -> set[str]:
    return {p.stem for p in folder.rglob("*.*")}


def test_every_preset_trains_with_its_recipe_from_a_local_stand_in(tmp_path):
    make_cone_folder(tmp_path / "real", 160, seed=0, size=(72, 48))
    make_cone_folder(tmp_path / "synthetic", 60, seed=5, size=(72, 48))
    presets = single_presets(["all"])
    assert set(presets) == set(PRESETS)
    for preset in presets:
        model = build_for_preset(preset, tmp_path / "models" / preset)
        out = tmp_path / "runs" / preset
        extra = ["--synthetic", str(tmp_path / "synthetic"), "--synthetic-share", "0.3"] if preset == "vit-b16-in21k" \
            else []
        assert cli.main([str(tmp_path / "real"), "--preset", preset, "--model", str(model), "--out", str(out),
                         *FEW_STEPS, *extra]) == 0
        record = json.loads((out / "model" / "sn72_train.json").read_text())
        recipe = record["recipe"]
        for key, value in PRESETS[preset].items():
            if key not in ("model", "epochs"):
                assert recipe[key] == value, (preset, key)
        assert recipe["regime"] == "native" and recipe["augment"] == []  # the native regime is every preset's
        assert record["resize"] == PRESETS[preset]["resize"]
        assert json.loads((out / "model" / "sn72_preprocess.json").read_text())["resize"] == PRESETS[preset]["resize"]
        assert record["head"][0].startswith("new two-class head")  # like the hub checkpoint: no roadwork head
        assert record["run"]["epochs_run"] == pytest.approx(1.0)
    vit = tmp_path / "runs" / "vit-b16-in21k"
    record = json.loads((vit / "model" / "sn72_train.json").read_text())
    assert record["recipe"]["focal_gamma"] == 2.0 and record["recipe"]["synthetic_share"] == 0.3
    mixed = record["run"]["synthetic"]
    trained = record["run"]["train_images"]
    assert mixed["images"] == 60 and mixed["per_epoch"] == round(trained * 0.3 / 0.7)
    text = (vit / "model" / "sn72_data.json").read_text()
    synth_hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "synthetic").rglob("*.*")}
    assert all(h in text for h in synth_hashes)  # trained on: recorded in the lineage
    assert not synth_hashes & (_hashes(vit / "dev") | _hashes(vit / "fit"))  # never early stopping nor fit


SERVED = """version: ensemble-e2e
release: 0.1.0
levels:
  - name: ensemble
    exit_margin: 0.5
    experts:
      - name: convnextv2
        backend: hf_classifier
        model: ./models/convnextv2
        device: cpu
        max_batch: 16
        warmup_batches: 1
      - name: dinov2
        backend: hf_classifier
        model: ./models/dinov2
        device: cpu
        max_batch: 16
        warmup_batches: 1
"""


def test_the_ensemble_preset_trains_both_members_fits_their_level_and_is_judged(tmp_path, capsys):
    members = ENSEMBLES["convnext-dinov2"]
    for name, preset in members.items():
        build_for_preset(preset, tmp_path / "models" / name, roadwork_head=True)
    make_cone_folder(tmp_path / "cones", 400, seed=0, size=(72, 48))
    make_cone_folder(tmp_path / "judge", 120, seed=31, size=(72, 48))
    served = tmp_path / "served.yaml"
    served.write_text(SERVED)
    before = served.read_text()
    code = ensemble_recipe.main([
        str(tmp_path / "cones"), "--preset", "convnext-dinov2", "--cascade", str(served), "--judge",
        str(tmp_path / "judge"), "--out", str(tmp_path / "ens"),
        *[f"--member={name}={tmp_path / 'models' / name}" for name in members],
        "--train-args", " ".join(FEW_STEPS), "--min-fit-images", "40",
        "--eval-args", "--fit-resamples 40 --folds 3 --latency-sample 0",
        "--promote-args", "--bootstrap 200 --latency-sample 0 --min-judge-images 100 --dry-run", "--no-progress"])
    printed = capsys.readouterr().out
    assert code in (0, 3), printed  # judged: promoted or refused by the gate, not bad input
    for tool in ("$ sn72-train", "$ sn72-eval", "$ sn72-promote"):
        assert tool in printed
    candidate = yaml.safe_load((tmp_path / "ens" / "ensemble" / "candidate.yaml").read_text())
    experts = {e["name"]: e["model"] for e in candidate["levels"][0]["experts"]}
    assert experts == {name: str((tmp_path / "ens" / name / "model").resolve()) for name in members}
    calibration = json.loads((tmp_path / "ens" / "ensemble" / "calibration.json").read_text())
    assert set(calibration["experts"]) == set(members)  # a temperature per member, fitted on the fit images
    assert "threshold" in calibration["levels"][0]
    assert served.read_text() == before  # a dry run changes nothing served
    verdicts = list((tmp_path / "promotions").rglob("verdicts.jsonl"))
    assert verdicts and verdicts[0].read_text().strip()


@pytest.mark.bench
def test_the_preset_bench_times_each_preset_through_the_real_trainer(tmp_path, capsys):
    out = tmp_path / "bench"
    assert training_bench.main(["--presets", "vit-b16-in21k", "--size", "tiny", "--device", "cpu",
                                "--images", "80", "--height", "48", "--batch-size", "8", "--skip-steps", "1",
                                "--windows", "3", "--compute-steps", "2", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "presets.json").read_text())
    assert list(result["presets"]) == ["vit-b16-in21k"]
    for entry in result["presets"].values():
        low, mid, high = (entry["images_per_s"][k] for k in ("min", "median", "max"))
        assert 0 < low <= mid <= high and entry["images_per_s"]["n"] == 3
        assert entry["epoch_seconds"]["median"] == pytest.approx(35_000 / mid)
        assert entry["compute_images_per_s"] > 0 and entry["peak_memory_gib"] is None  # no CUDA here
    assert result["presets"]["vit-b16-in21k"]["recipe"]["focal_gamma"] == 2.0
