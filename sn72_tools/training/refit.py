"""After a model changes, the cascade's calibration is stale: fit a new one as a *candidate*, in the run's folder.

`sn72-train --out OUT --refit --cascade C` writes OUT/candidate/: `candidate.yaml` (C with the chosen expert
serving OUT/model and naming the new calibration), `calibration.json` (fitted with `sn72_tools.evaluation.cli.run`,
the code of `sn72-eval --fit`, on every image of the run's fit set) and the eval's report. Nothing served changes:
C, its calibration and its release stay as they are; `sn72-promote` judges the candidate against C on a frozen
judge set and installs it only when it is better beyond noise.

The fit set must be images the new model never learnt from (neither trained nor early-stopped on, nor its base
model's lineage): the replay guard refuses any other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import ValidationError

from cascade.config import CascadeConfig, ExpertConfig, format_validation_error, load_cascade
from cascade.experts.base import ExpertError
from cascade.experts.preprocess import recorded_resize
from sn72_tools.evaluation import cli, report, roles
from sn72_tools.evaluation.datasets import EvalError
from sn72_tools.evaluation.fit import MIN_FIT_IMAGES
from sn72_tools.promotion.candidate import write_candidate
from sn72_tools.training import data
from sn72_tools.training.card import TRAIN_RECORD
from sn72_tools.training.recipe import TrainError


class NotACandidate(TrainError):
    """The run's model is worse than its start: no candidate is made (exit 3)."""


def _serving_expert(cascade: CascadeConfig, cascade_path: Path, base_model: str | None,
                    name: str | None) -> ExpertConfig:
    """The expert the new model replaces: --expert, else the one serving the run's base model, else the only
    hf_classifier."""
    classifiers = [e for e in cascade.experts() if e.backend == "hf_classifier"]
    if name is not None:
        chosen = [e for e in cascade.experts() if e.name == name]
        if not chosen or chosen[0].backend != "hf_classifier":
            raise TrainError(f"--expert {name}: {cascade_path} has no hf_classifier expert of that name "
                             f"(its hf_classifier experts: {[e.name for e in classifiers]})")
        return chosen[0]
    if base_model is not None:
        base = str(Path(base_model).expanduser().resolve()) if Path(base_model).expanduser().exists() else base_model
        serving = [e for e in classifiers if e.model == base]
        if len(serving) == 1:
            return serving[0]
    if len(classifiers) == 1:
        return classifiers[0]
    raise TrainError(f"{cascade_path}: say which expert the new model replaces with --expert (hf_classifier experts: "
                     f"{[e.name for e in classifiers]}; none serves the run's base model {base_model})")


def refit(out: Path, cascade_path: Path, refit_data: Path | None = None, *, expert: str | None = None, seed: int = 0,
          progress: bool = True, latency_sample: int = 100, min_fit_images: int = MIN_FIT_IMAGES) -> list[str]:
    """A candidate for `cascade_path` serving OUT/model, fitted on images it never learnt from. Lines to print."""
    model = (out / "model").resolve()
    if not (model / "config.json").is_file():
        raise TrainError(f"--refit: no trained model in {model}")
    record = json.loads((model / TRAIN_RECORD).read_text()) if (model / TRAIN_RECORD).is_file() else {}
    verdict = record.get("verdict") or {}
    if verdict.get("worse"):
        raise NotACandidate(f"--refit: {model} is worse than its start ({verdict['text']}): no candidate")
    try:
        cascade = load_cascade(cascade_path)
    except ValidationError as exc:
        raise TrainError(f"invalid cascade {cascade_path}:\n{format_validation_error(exc)}") from exc
    except ValueError as exc:
        raise TrainError(f"invalid cascade {cascade_path}: {exc}") from exc
    replaced = _serving_expert(cascade, cascade_path, record.get("base_model"), expert)
    lines = []
    trained_with = recorded_resize(str(model))
    if replaced.resize is not None and replaced.resize != trained_with:
        lines.append(f"warning: expert {replaced.name} sets resize={replaced.resize} but the model was trained with "
                     f"{trained_with}: it will see other pixels; remove `resize:` from {cascade_path}")
    fit_on = refit_data or out / "fit"
    if not fit_on.exists() or (fit_on.is_dir() and not any(fit_on.rglob("*.*"))):
        raise TrainError(f"--refit: no fit images in {fit_on} (the run held none out: --fit-share 0); give "
                         "--fit-data, labelled images the model never learnt from")
    split = data.read_split(out / data.SPLIT_FILE)
    lineage = roles.model_lineage(model)
    learnt = set(split["train"]) | set(split["dev"]) | lineage.seen
    examples, _ = data.read_sources([fit_on], progress=progress)
    replayed = [e for e in examples if e.sha256 in learnt]
    if replayed:
        raise TrainError(f"--refit: {len(replayed)} of the {len(examples)} images of {fit_on} are images {model} "
                         f"learnt from (training, early stopping or its base's lineage; same content hash), e.g. "
                         f"{replayed[0].name}; fit on images it never saw")
    folder = out / "candidate"
    shutil.rmtree(folder, ignore_errors=True)
    unfitted = write_candidate(cascade_path, folder, None, {replaced.name: str(model)}, name="unfitted.yaml")
    argv = [str(fit_on), "--cascade", str(unfitted), "--fit", "--holdout", "0", "--out", str(folder), "--cache",
            str(out / "eval-cache"), "--seed", str(seed), "--latency-sample", str(latency_sample),
            "--calibration-out", str(folder / "calibration.json"), "--min-fit-images", str(min_fit_images)]
    if not progress:
        argv.append("--no-progress")
    try:
        result = cli.run(cli.build_parser().parse_args(argv))
    except (EvalError, ExpertError, OSError) as exc:
        raise TrainError(f"--refit: {exc}") from exc
    # the eval's own next steps name the unfitted copy; the ones below name the served cascade
    lines += [line for line in report.format_report(result).rstrip("\n").split("\n")
              if "unfitted.yaml" not in line]
    lines.append(f"candidate: {folder / 'candidate.yaml'} ({replaced.name} serving {model}); {cascade_path} is "
                 "unchanged")
    lines.append(f"judge it: sn72-promote --cascade {cascade_path} --candidate {folder / 'candidate.yaml'} "
                 "--judge JUDGE-SET")
    return lines
