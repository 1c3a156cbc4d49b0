"""The eval tool's verdict on a model folder: served as the only expert of a one-level cascade, through the
real engine in eval mode (sn72_tools/evaluation/record.py), scored by sn72_tools/evaluation/report.py.

The trainer calls this on the early-stopping and fit images before training (the starting model, in the run's resize
mode) and after (the output folder exactly as the miner would load it), and writes both side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cascade.config import CascadeConfig, ExpertConfig, LevelConfig, ResizeMode
from cascade.experts.base import ExpertError
from sn72_tools.evaluation import plots, record, report
from sn72_tools.evaluation.bootstrap import paired_difference
from sn72_tools.evaluation.datasets import EvalError, open_source
from sn72_tools.training.recipe import TrainError

EXPERT = "candidate"


@dataclass
class Verdict:
    """One model judged on one folder of images (early-stopping or fit)."""

    title: str
    evaluation: report.Evaluation
    names: list[str]  # file names (relative to the folder), in the order of `probabilities`
    probabilities: np.ndarray  # the expert's raw P(roadwork) per image, as the engine answered
    skipped: int
    seconds_per_1000_images: float

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.evaluation.summary["experts"][EXPERT])


def one_expert_cascade(model: Path, resize: ResizeMode, device: str) -> CascadeConfig:
    expert = ExpertConfig(name=EXPERT, backend="hf_classifier", model=str(model), device=device, resize=resize,
                          max_batch=32, warmup_batches=1)
    return CascadeConfig(version="sn72-train", levels=[LevelConfig(name="model", exit_margin=0.5, experts=[expert])])


def judge(title: str, model: Path, resize: ResizeMode, device: str, folder: Path, cache: Path, *, seed: int = 0,
          progress: bool = True, reward_trials: int = 1000) -> Verdict:
    """Record the model's answers on every image of `folder` through the engine and score them."""
    cascade = one_expert_cascade(model, resize, device)
    try:
        source = open_source(folder, "folder")
        engine = record.EvalEngine(cascade)
        output_cache = record.OutputCache(cache)
        try:
            recording = record.record(source, cascade, engine, output_cache, seed=seed, progress=progress)
        finally:
            engine.close()
            output_cache.close()
    except (EvalError, ExpertError) as exc:
        raise TrainError(f"judging {model} on {folder}: {exc}") from exc
    if recording.labels.size == 0:
        raise TrainError(f"judging {model}: no image of {folder} could be run ({len(recording.skipped)} skipped)")
    costs = recording.expert_seconds or {EXPERT: 1.0}
    evaluation = report.evaluate(cascade, recording.experts, recording.outputs, recording.labels,
                                 expert_seconds=costs, trials=reward_trials, seed=seed)
    run_s = recording.seconds - recording.startup_s
    per_1000 = run_s / max(1, recording.inferred) * 1000 if recording.inferred else 0.0
    return Verdict(title, evaluation, recording.names, recording.outputs[:, 0], len(recording.skipped), per_1000)


def write_verdicts(folder: Path, verdicts: list[Verdict], described: str) -> dict[str, Any]:
    """report.json, report.txt and reliability.png of the verdicts, side by side."""
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "tool": "sn72-train",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sets": described,
        "evaluations": {v.title: v.evaluation.summary for v in verdicts},
        "skipped": {v.title: v.skipped for v in verdicts},
    }
    report.write_json(result, folder / "report.json")
    lines = [described, ""]
    for verdict in verdicts:
        lines += [report.format_evaluation(verdict.title, verdict.evaluation.summary), ""]
    (folder / "report.txt").write_text("\n".join(lines))
    plots.reliability_diagram({v.title: v.evaluation for v in verdicts}, folder / "reliability.png")
    return result


def against_start(judged: dict[str, dict[str, Verdict]], seed: int) -> dict[str, Any] | None:
    """The new model against its start, paired, on the fit images (neither learnt from them), else on the dev
    images (which chose the checkpoint: they flatter the new model)."""
    part = "fit" if "fit" in judged and len(judged["fit"]) == 2 else "dev"
    if len(judged.get(part, {})) != 2:
        return None
    before, after = judged[part]["before"], judged[part]["after"]
    position = {name: i for i, name in enumerate(before.names)}
    shared = [name for name in after.names if name in position]
    rows_after = [after.names.index(name) for name in shared]
    rows_before = [position[name] for name in shared]
    labels = after.evaluation.labels[rows_after]
    difference = paired_difference(labels, np.round(after.probabilities[rows_after]).astype(int),
                                   np.round(before.probabilities[rows_before]).astype(int), "mcc", seed=seed)
    caveat = "" if part == "fit" else " (early-stopping images: they chose the checkpoint, so this flatters it)"
    worse = difference.estimate < 0.0
    text = (f"new model minus its start, MCC on the {len(shared)} {part} images{caveat}: {difference.text()}; "
            + ("worse than its start: not a candidate for the cascade" if worse else
               "better beyond noise" if difference.above_zero else "not better beyond noise"))
    return {"set": part, "images": len(shared), "mcc_difference": difference.as_dict(), "worse": worse, "text": text}
