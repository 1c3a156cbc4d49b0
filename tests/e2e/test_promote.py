"""`sn72-promote` end to end: train -> candidate -> judged against the served cascade through the real engine ->
installed only when better beyond noise; a fit on random models refused (exit 3) with nothing changed; judge
sets that overlap a side's training or fit, or differ from the frozen one, refused (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cascade.config import load_cascade
from sn72_lab.tiny_models import build_tiny_vit
from sn72_tools.evaluation import cli as eval_cli
from sn72_tools.promotion import cli
from sn72_tools.training import cli as train_cli
from sn72_tools.training.synthetic import make_cone_folder

pytestmark = pytest.mark.slow

FAST = ["--bootstrap", "400", "--latency-sample", "4", "--no-progress"]
SERVED = """# the served cascade: an operator's comment that promotion keeps
version: promote-e2e
release: 0.1.0
levels:
  - name: ft
    exit_margin: 0.5
    experts:
      - name: ft
        backend: hf_classifier
        model: ./models/tiny-vit   # the random starting model
        device: cpu
        max_batch: 16
        warmup_batches: 1
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny ViT trained on the cone task, and its candidate for the served cascade (fitted on its fit images)."""
    root = tmp_path_factory.mktemp("promote")
    build_tiny_vit(root / "models" / "tiny-vit")
    make_cone_folder(root / "cones", 800, seed=0, size=(72, 48))
    make_cone_folder(root / "judge", 240, seed=31, size=(72, 48))
    (root / "served.yaml").write_text(SERVED)
    assert train_cli.main([str(root / "cones"), "--model", str(root / "models" / "tiny-vit"), "--out",
                           str(root / "run"), "--epochs", "6", "--lr", "3e-3", "--resize", "letterbox", "--no-eval",
                           "--no-progress"]) == 0
    assert train_cli.main(["--out", str(root / "run"), "--refit", "--cascade", str(root / "served.yaml"),
                           "--min-fit-images", "40", "--no-progress"]) == 0
    return root


def served_copy(root: Path, name: str) -> Path:
    path = root / name / "served.yaml"
    path.parent.mkdir()
    path.write_text(SERVED.replace("./models/tiny-vit", "../models/tiny-vit"))
    return path


def promote(served: Path, candidate: Path, judge: Path, *extra: str) -> int:
    return cli.main(["--cascade", str(served), "--candidate", str(candidate), "--judge", str(judge), "--cache",
                     str(served.parent.parent / "cache"), *FAST, *extra])


def test_a_better_candidate_is_installed_and_the_old_cascade_kept(trained, capsys):
    root = trained
    served = served_copy(root, "better")
    candidate = root / "run" / "candidate" / "candidate.yaml"
    capsys.readouterr()
    assert promote(served, candidate, root / "judge") == 0
    out = capsys.readouterr().out
    assert "decision: the candidate is better beyond noise: mcc difference +" in out
    assert "judge set: 240 images of folder:" in out and "frozen now in" in out
    text = served.read_text()
    assert text.startswith("# the served cascade: an operator's comment that promotion keeps")
    assert "# the random starting model" in text  # the round trip keeps comments
    data = yaml.safe_load(text)
    assert data["release"] == "0.1.1" and data["levels"][0]["experts"][0]["model"] == "../run/model"
    assert data["calibration"].startswith("calibrations/served.") and data["calibration"].endswith(".json")
    loaded = load_cascade(served)
    assert loaded.fitted() is not None and loaded.experts()[0].model == str((root / "run" / "model").resolve())
    history = served.parent / "promotions" / "served"
    record = next(history.glob("*-promoted"))
    assert (record / "served-before.yaml").read_text() == SERVED.replace("./models/tiny-vit", "../models/tiny-vit")
    report = json.loads((record / "report.json").read_text())
    assert report["decision"]["promote"] and report["differences"]["mcc"]["low"] > 0
    assert report["sides"]["candidate"]["metrics"]["mcc"] > report["sides"]["served"]["metrics"]["mcc"]
    assert set(report["differences"]) == {"mcc", "accuracy", "reward"}
    assert json.loads((history / "judge.json").read_text())["uses"] == 1
    # the same candidate again: nothing served would change
    assert promote(served, candidate, root / "judge") == 3
    assert "nothing changed" in capsys.readouterr().out and yaml.safe_load(served.read_text())["release"] == "0.1.1"


def test_a_fit_on_random_models_is_never_promoted(trained, capsys):
    root = trained
    served = served_copy(root, "random")
    before = served.read_bytes()
    make_cone_folder(root / "random" / "fitset", 300, seed=41, size=(72, 48))
    assert eval_cli.main([str(root / "random" / "fitset"), "--cascade", str(served), "--fit", "--holdout", "0",
                          "--out", str(root / "random" / "fit"), "--cache", str(root / "cache"), "--latency-sample",
                          "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert promote(served, root / "random" / "fit" / "candidate.yaml", root / "judge") == 3
    out = capsys.readouterr().out
    assert "refused: " in out and "nothing changed" in out
    assert served.read_bytes() == before and not (served.parent / "calibrations").exists()
    assert next((served.parent / "promotions" / "served").glob("*-refused")).is_dir()


def test_judge_sets_that_overlap_a_role_or_differ_from_the_frozen_one_are_refused(trained, capsys):
    root = trained
    served = served_copy(root, "roles")
    candidate = root / "run" / "candidate" / "candidate.yaml"
    capsys.readouterr()
    assert promote(served, candidate, root / "cones") == 2  # the candidate model's own training images
    err = capsys.readouterr().err
    assert "the judge set shares" in err and "images of training of the candidate expert ft" in err
    fit_only = root / "roles" / "fit-images"
    shutil.copytree(root / "run" / "fit", fit_only)
    assert promote(served, candidate, fit_only) == 2
    assert "images of fitting of the candidate calibration" in capsys.readouterr().err
    # a dry run changes nothing served, but it is a look like any other: it freezes the judge set
    assert promote(served, candidate, root / "judge", "--dry-run") == 0
    history = served.parent / "promotions" / "served"
    assert json.loads((history / "judge.json").read_text())["uses"] == 1
    assert served.read_text() == SERVED.replace("./models/tiny-vit", "../models/tiny-vit")
    # shopping (found by an outside review): another judge set, by dry run or for real, is refused ...
    make_cone_folder(root / "roles" / "other-judge", 240, seed=51, size=(72, 48))
    capsys.readouterr()
    for extra in ((), ("--dry-run",)):
        assert promote(served, candidate, root / "roles" / "other-judge", *extra) == 2
        assert "differs from the frozen one" in capsys.readouterr().err
    # ... and a new judge set cannot rescue a candidate already judged on the frozen one
    assert promote(served, candidate, root / "roles" / "other-judge", "--new-judge") == 2
    assert "a new judge set cannot rescue it" in capsys.readouterr().err
    assert not list(history.glob("judge.*.json"))  # the frozen set is still the one in force
    # ... nor a judge set too small to tell chance from a gain
    small = root / "roles" / "small-judge"
    make_cone_folder(small, 40, seed=61, size=(72, 48))
    assert promote(served, candidate, small) == 2
    assert "the gate needs at least 200 (50 of each class)" in capsys.readouterr().err
    assert promote(served, candidate, root / "judge") == 0
    assert json.loads((history / "judge.json").read_text())["uses"] == 2
    assert len((history / "verdicts.jsonl").read_text().splitlines()) == 2


def test_a_candidate_that_changes_more_than_models_and_calibration_is_refused(trained, capsys):
    root = trained
    served = served_copy(root, "shape")
    candidate = root / "shape" / "candidate.yaml"
    data = yaml.safe_load((root / "run" / "candidate" / "candidate.yaml").read_text())
    data["levels"][0]["experts"][0]["max_batch"] = 8
    data["calibration"] = str((root / "run" / "candidate" / "calibration.json").resolve())
    candidate.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert promote(served, candidate, root / "judge") == 2
    assert "changes more than experts' models and the calibration" in capsys.readouterr().err


def test_a_served_model_folder_is_never_overwritten_by_training(trained, capsys):
    """An outside review retrained the served run with --overwrite: the miner then refused its own cascade at the
    next start. Promotion notes which cascade serves a folder; training refuses to overwrite it."""
    root = trained
    served = served_copy(root, "overwrite")
    candidate = root / "run" / "candidate" / "candidate.yaml"
    assert promote(served, candidate, root / "judge") == 0
    before = (root / "run" / "model" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert train_cli.main([str(root / "cones"), "--model", str(root / "models" / "tiny-vit"), "--out",
                           str(root / "run"), "--overwrite", "--epochs", "1", "--no-eval", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'run' / 'model'} is served by " in err and str(served.resolve()) in err
    assert "train into a new --out" in err
    assert (root / "run" / "model" / "model.safetensors").read_bytes() == before
    assert load_cascade(served).fitted() is not None  # still loads: the weights are the ones it was fitted for
