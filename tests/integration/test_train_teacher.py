"""Teacher labels in `sn72-train` (sn72_tools/training/teacher.py): their loss weight reaches the loss; they train
only (never dev, fit or a judge set); the model's lineage says how many and from which teacher; a person's label
of the same image wins; `--refit` and `sn72-promote` refuse a fit or judge set holding one.

Real pieces only: a tiny ViT built here (loaded as the miner loads a folder), generated cone images, a real
active-learning store, the real CLIs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from cascade.observers.al_store import ALStore, Reason, Sample
from sn72_lab.tiny_models import build_tiny_vit
from sn72_tools.al import teacher as al_teacher
from sn72_tools.promotion import cli as promote_cli
from sn72_tools.training import cli
from sn72_tools.training.data import Example
from sn72_tools.training.synthetic import make_cone_folder
from sn72_tools.training.teacher import WeightedPixelSet

SOURCE = "teacher:top@0123456789ab"
RECIPE = ["--epochs", "1", "--lr", "3e-3", "--batch-size", "16", "--resize", "letterbox", "--seed", "0", "--no-eval",
          "--no-progress"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png")) + sorted(folder.rglob("*.jpg"))


def write_cascade(path: Path, model: Path) -> Path:
    cascade = {"version": "teacher-test", "release": "0.1.0", "levels": [{"name": "top", "exit_margin": 0.5,
               "experts": [{"name": "ft", "backend": "hf_classifier", "model": str(model), "device": "cpu",
                            "max_batch": 16, "warmup_batches": 1}]}]}
    path.write_text(yaml.safe_dump(cascade, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `sn72-train` run on 120 human-labelled cones plus the teacher labels of a store holding 24 others (one of
    them also a human image, labelled the other way by the teacher)."""
    root = tmp_path_factory.mktemp("teach-train")
    model = build_tiny_vit(root / "tiny-vit")
    make_cone_folder(root / "human", 120, seed=0, size=(72, 48))
    make_cone_folder(root / "pool", 24, seed=1, size=(72, 48))
    pool = files_of(root / "pool")
    clash = files_of(root / "human")[0]  # a person labelled it; the teacher says the opposite
    store = root / "al"
    with ALStore(store) as writer:
        for i, path in enumerate([*pool, clash]):
            writer.add(Sample(image=path.read_bytes(), reason=Reason.UNCERTAIN, created_at=1000.0 + i))
    truth = {sha(p): int(p.parent.name) for p in pool}
    with ALStore(store, writer=False) as reader:
        al_teacher.put_teacher_labels(reader, [*((h, y, 0.99 if y else 0.01) for h, y in truth.items()),
                                               (sha(clash), 1 - int(clash.parent.name), 0.5)], SOURCE, 0.95, "v")
    code = cli.main([str(root / "human"), "--teacher-labels", str(store), "--teacher-weight", "0.5",
                     "--model", str(model), "--out", str(root / "run"), *RECIPE])
    assert code == 0
    return {"root": root, "model": model, "store": store, "pool": pool, "truth": truth, "clash": sha(clash)}


@pytest.mark.slow
def test_the_lineage_records_the_teacher_labels_and_they_train_only(run: dict[str, Any]) -> None:
    out = run["root"] / "run"
    lineage = json.loads((out / "model" / "sn72_data.json").read_text())
    taught = lineage["teacher_labels"]
    assert taught["count"] == 24 and taught["weight"] == [0.5]
    assert taught["by_teacher"] == {SOURCE: {"0": 12, "1": 12}}
    assert set(taught["sha256"]) == set(run["truth"]) and run["clash"] not in taught["sha256"]
    assert set(taught["sha256"]) <= set(lineage["trained"])  # older checks see them as trained on
    split = json.loads((out / "split.json").read_text())
    assert set(run["truth"]) <= set(split["train"])
    assert set(run["truth"]).isdisjoint(set(split["dev"]) | set(split["fit"]))
    record = json.loads((out / "model" / "sn72_train.json").read_text())
    assert record["run"]["teacher_labels"]["count"] == 24
    (counted,) = [c for c in record["data"] if c["source"].startswith("teacher labels of")]
    assert counted["train"] == {"0": 12, "1": 12} and counted["conflicting"] == 1  # the person's label won


@pytest.mark.slow
def test_the_gate_refuses_a_judge_set_holding_a_teacher_labelled_image(
        run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served = write_cascade(tmp_path / "served.yaml", run["model"])
    candidate = write_cascade(tmp_path / "candidate.yaml", run["root"] / "run" / "model")
    judge = tmp_path / "judge"
    for path in run["pool"][:3]:  # with their true labels, as a person would label them
        (judge / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, judge / path.parent.name / path.name)
    code = promote_cli.main(["--cascade", str(served), "--candidate", str(candidate), "--judge", str(judge),
                             "--cache", str(tmp_path / "cache"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == promote_cli.BAD_INPUT
    assert "3 images of teacher labels the candidate expert ft trained on" in err
    assert "training of the candidate expert" not in err  # named as teacher labels, not as a person's


@pytest.mark.slow
def test_refit_refuses_a_fit_set_holding_a_teacher_labelled_image(
        run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served = write_cascade(tmp_path / "served.yaml", run["model"])
    fit = tmp_path / "fit"
    for path in run["pool"][:2]:
        (fit / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, fit / path.parent.name / path.name)
    code = cli.main(["--out", str(run["root"] / "run"), "--refit", "--cascade", str(served), "--refit-data", str(fit),
                     "--no-progress"])
    assert code == 2
    assert "2 of the 2 images" in capsys.readouterr().err


@pytest.mark.slow
def test_the_teacher_weight_reaches_the_loss(tmp_path: Path) -> None:
    from transformers import TrainingArguments, default_data_collator

    from sn72_tools.training.losses import RecipeTrainer
    from sn72_tools.training.model import PixelSet, inspect_model, load_starting_model

    model = build_tiny_vit(tmp_path / "tiny-vit")
    make_cone_folder(tmp_path / "cones", 4, seed=0, size=(72, 48))
    files = files_of(tmp_path / "cones")
    examples = [Example(sha(p), int(p.parent.name), p.name, "test", p.read_bytes, weight=w)
                for p, w in zip(files, (1.0, 0.5, 1.0, 0.5), strict=True)]
    start = load_starting_model(inspect_model(str(model)), "full", 0)
    trainer = RecipeTrainer(model=start.model, args=TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True,
                                                                      report_to="none"))
    start.model.eval()  # no dropout: the same logits for both passes
    weighted = default_data_collator([WeightedPixelSet(examples, start, "letterbox")[i] for i in range(4)])
    plain = default_data_collator([PixelSet(examples, start, "letterbox")[i] for i in range(4)])
    assert weighted["sample_weight"].tolist() == [1.0, 0.5, 1.0, 0.5]
    with torch.no_grad():
        logits = start.model(pixel_values=plain["pixel_values"]).logits
        per_image = F.cross_entropy(logits.float(), plain["labels"], reduction="none")
        got = trainer.compute_loss(start.model, dict(weighted))
        unweighted = trainer.compute_loss(start.model, dict(plain))
    expected = (per_image * torch.tensor([1.0, 0.5, 1.0, 0.5])).sum() / 4
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(unweighted) == pytest.approx(float(per_image.mean()), rel=1e-5)
    assert abs(float(got) - float(unweighted)) > 1e-4
