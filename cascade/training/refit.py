"""After a model changes, the cascade's calibration is stale: refit it with the eval tool and bump the release.

The fit runs `cascade.evaluation.cli.run` (the same code as `sn72-eval --fit`) on labelled images the new
model never trained on: the run's held-out folder by default. A fit on training images would trust the
model more than it deserves, so the replay guard refuses them here too.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from cascade.config import format_validation_error, load_cascade
from cascade.evaluation import cli, report
from cascade.evaluation.datasets import EvalError
from cascade.experts.base import ExpertError
from cascade.experts.preprocess import recorded_resize
from cascade.release import bump_release
from cascade.training import data
from cascade.training.recipe import TrainError


def _release(path: Path) -> str:
    loaded = yaml.safe_load(path.read_text()) or {}
    return str(loaded.get("release", "")) if isinstance(loaded, dict) else ""


def refit(out: Path, cascade_path: Path, refit_data: Path | None = None, *, seed: int = 0, progress: bool = True,
          latency_sample: int = 100) -> list[str]:
    """Fit the cascade that serves OUT/model on images it did not train on; bump its release. Lines to print."""
    model = (out / "model").resolve()
    if not (model / "config.json").is_file():
        raise TrainError(f"--refit: no trained model in {model}")
    try:
        cascade = load_cascade(cascade_path)
    except ValidationError as exc:
        raise TrainError(f"invalid cascade {cascade_path}:\n{format_validation_error(exc)}") from exc
    except ValueError as exc:
        raise TrainError(f"invalid cascade {cascade_path}: {exc}") from exc
    serving = [e for e in cascade.experts() if Path(e.model).expanduser().resolve() == model]
    if not serving:
        relative = os.path.relpath(model, cascade_path.resolve().parent)
        raise TrainError(f"{cascade_path} has no expert serving {model}: set `model: ./{relative}` on its "
                         "hf_classifier expert, then rerun with --refit")
    lines = []
    trained_with = recorded_resize(str(model))
    for expert in serving:
        if expert.resize is not None and expert.resize != trained_with:
            lines.append(f"warning: expert {expert.name} sets resize={expert.resize} but the model was trained with "
                         f"{trained_with}: it will see other pixels; remove `resize:` from {cascade_path}")
    fit_on = refit_data or out / "heldout"
    trained = set(data.read_split(out / data.SPLIT_FILE)["train"])
    examples, _ = data.read_sources([fit_on], progress=progress)
    replayed = [e for e in examples if e.sha256 in trained]
    if replayed:
        raise TrainError(f"--refit: {len(replayed)} of the {len(examples)} images of {fit_on} are training images "
                         f"of {model} (same content hash), e.g. {replayed[0].name}; fit on images it never saw")
    before = _release(cascade_path)
    argv = [str(fit_on), "--cascade", str(cascade_path), "--fit", "--out", str(out / "refit"), "--cache",
            str(out / "eval-cache"), "--seed", str(seed), "--latency-sample", str(latency_sample)]
    if not progress:
        argv.append("--no-progress")
    try:
        result = cli.run(cli.build_parser().parse_args(argv))
    except (EvalError, ExpertError, OSError) as exc:
        raise TrainError(f"--refit: {exc}") from exc
    # The eval bumps the release itself when it rewrites the calibration the cascade serves; otherwise the
    # new model alone is a new release.
    release = _release(cascade_path)
    if release == before:
        release = bump_release(cascade_path)
    lines += report.format_report(result).rstrip("\n").split("\n")
    lines.append(f"{cascade_path}: release {before} -> {release}; publish it with sn72-submit")
    return lines
