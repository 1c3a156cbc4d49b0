"""One training run, start to finish: data, starting model, transformers `Trainer`, the model folder, verdicts.

    OUT/
      model/          the HF model folder a cascade can serve (weights, processor, sn72_preprocess.json,
                      README.md model card, sn72_train.json, sn72_data.json: the images it and its base learnt)
      checkpoints/    the Trainer's checkpoints (one per epoch, the best and the last kept): --resume
      dev/            the early-stopping images as 0/ + 1/ (they chose the checkpoint)
      fit/            the calibration's fit images as 0/ + 1/ (never trained on: --refit fits on them)
      dev-predictions.csv   the trainer's P(roadwork) per early-stopping image, and the engine's
      eval/           the eval tool's report, before and after, on the dev and the fit images
      split.json      content hashes of the train, dev and fit images (checked by --resume and --refit)

The verdict compares the new model with its start on the fit images (clean for both: neither learnt from them),
paired; a new model worse than its start is said to be so and is not a candidate for the cascade.
"""

from __future__ import annotations

import csv
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from cascade.config import ResizeMode
from cascade.experts.base import ExpertError
from cascade.experts.preprocess import recorded_resize, write_preprocess_record
from sn72_tools.evaluation import roles
from sn72_tools.promotion.served import serving_cascades
from sn72_tools.training import card, data, judge, mix, teacher
from sn72_tools.training.losses import RecipeTrainer
from sn72_tools.training.model import (
    PixelSet,
    StartingModel,
    class_weights,
    inspect_model,
    load_starting_model,
    make_metrics,
    positive_probability,
)
from sn72_tools.training.recipe import Recipe, TrainError


@dataclass
class Inputs:
    """Where the run reads from and writes to, and how it behaves (not part of the recipe)."""

    data: list[Path]
    out: Path
    dev: list[Path] = field(default_factory=list)  # early stopping (default: --holdout of the data)
    fit: list[Path] = field(default_factory=list)  # the calibration fit (default: --fit-share of the data)
    exclude: list[Path] = field(default_factory=list)  # images in no role (a frozen judge set)
    synthetic: Path | None = None  # generated images that train only (recipe.synthetic_share of each epoch: mix.py)
    kind: str = "auto"
    split: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = False
    overwrite: bool = False
    judge: bool = True  # the eval tool's verdicts before and after (off for benchmarks)
    progress: bool = True
    teacher_stores: list[Path] | None = None  # --teacher-labels: AL stores whose teacher labels train ([]: DATA's)
    teacher_weight: float = teacher.DEFAULT_WEIGHT  # their per-sample loss weight


@dataclass
class Outcome:
    model: Path
    record: dict[str, Any]
    split: data.Split
    trainer_probabilities: dict[str, float]  # dev file name -> P(roadwork) from the trainer
    engine_probabilities: dict[str, float]  # dev file name -> P(roadwork) from the engine (judged only)
    train_seconds: float
    lines: list[str]  # the summary printed at the end
    worse: bool = False  # worse than its start on the verdict's set: not a candidate


def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is visible")
    return "cuda" if requested in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def _precision(recipe: Recipe, device: str) -> str:
    import torch

    if recipe.precision == "bf16" and device != "cuda":
        raise TrainError("--precision bf16 needs a CUDA device")
    if recipe.precision == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return recipe.precision


def check_out(inputs: Inputs) -> Path | None:
    """Check OUT against --resume/--overwrite (changing nothing); the checkpoint to resume from, if resuming."""
    from transformers.trainer_utils import get_last_checkpoint

    serving = serving_cascades(inputs.out / "model") if (inputs.out / "model").is_dir() else []
    if serving:
        raise TrainError(f"{inputs.out / 'model'} is served by {', '.join(map(str, serving))}: overwriting it would "
                         "unbind that cascade's calibration (the miner would refuse it at its next start or reload); "
                         "train into a new --out and promote the result")
    checkpoints = inputs.out / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if inputs.resume:
        if last is None or not (inputs.out / data.SPLIT_FILE).is_file():
            raise TrainError(f"--resume: no checkpoint in {checkpoints} to resume from")
        return Path(last)
    earlier = [p.name for p in (checkpoints, inputs.out / "model") if p.exists()]
    if earlier and not inputs.overwrite:
        raise TrainError(f"{inputs.out} holds an earlier run ({', '.join(earlier)}): --resume continues it, "
                         "--overwrite starts over (the model folder is replaced only when the new one is ready)")
    return None


def start_out(inputs: Inputs, split: data.Split, resumed: bool) -> None:
    """Once the inputs are known good: clear an overwritten run's checkpoints and verdicts, record the split
    (or, resuming, check it is the checkpoint's)."""
    split_file = inputs.out / data.SPLIT_FILE
    if resumed:
        data.check_resumed_split(split_file, split)
        return
    shutil.rmtree(inputs.out / "checkpoints", ignore_errors=True)
    shutil.rmtree(inputs.out / "eval", ignore_errors=True)  # an earlier model's verdicts
    shutil.rmtree(inputs.out / "candidate", ignore_errors=True)  # a candidate made for an earlier model
    inputs.out.mkdir(parents=True, exist_ok=True)
    data.write_split(split_file, split)


def _hashes(paths: list[Path], inputs: Inputs) -> frozenset[str]:
    found: set[str] = set()
    for path in paths:
        try:
            found |= set(roles.source_hashes(path, inputs.kind, inputs.split, inputs.image_column,
                                             inputs.label_column))
        except roles.EvalError as exc:
            raise TrainError(str(exc)) from exc
    return frozenset(found)


def read_data(inputs: Inputs, recipe: Recipe, side: int, base: roles.Lineage) -> data.Split:
    def read(paths: list[Path]) -> tuple[list[data.Example], list[data.SourceCount]]:
        return data.read_sources(paths, kind=inputs.kind, split=inputs.split, image_column=inputs.image_column,
                                 label_column=inputs.label_column, min_side=side, progress=inputs.progress)

    examples, counts = read(inputs.data)
    dev, dev_counts = read(inputs.dev) if inputs.dev else (None, None)
    fit, fit_counts = read(inputs.fit) if inputs.fit else (None, None)
    exclude = _hashes(inputs.exclude, inputs)
    split = data.split_examples(examples, counts, dev=dev, dev_counts=dev_counts, fit=fit, fit_counts=fit_counts,
                                dev_share=recipe.holdout, fit_share=recipe.fit_share, seed=recipe.seed,
                                base_seen=frozenset(base.seen), exclude=exclude)
    if inputs.teacher_stores is None:
        return split
    stores = inputs.teacher_stores or teacher.stores_among(inputs.data)
    if not stores:
        raise TrainError("--teacher-labels without STORE: no active-learning store among DATA to read them from")
    taught, taught_counts = teacher.read_teacher_examples(stores, inputs.teacher_weight, min_side=side,
                                                          progress=inputs.progress)
    return teacher.add_teacher_examples(split, taught, taught_counts, exclude)  # train role only, after the split


def _training_arguments(recipe: Recipe, inputs: Inputs, device: str, precision: str) -> Any:
    from transformers import TrainingArguments

    by_mcc = recipe.best_metric == "mcc"
    return TrainingArguments(
        output_dir=str(inputs.out / "checkpoints"), per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.eval_batch_size, num_train_epochs=recipe.epochs,
        learning_rate=recipe.learning_rate, weight_decay=recipe.weight_decay, lr_scheduler_type="cosine",
        warmup_steps=recipe.warmup_ratio,  # below 1: a share of the steps
        eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch", save_total_limit=2,
        # NOTE: transformers 5.20's load_best_model_at_end loads the raw state dict without v5's key renaming
        # (a ViT keeps its last weights, with a warning): `_best_model` reloads the best checkpoint instead.
        load_best_model_at_end=False, metric_for_best_model="mcc" if by_mcc else "loss", greater_is_better=by_mcc,
        restore_callback_states_from_checkpoint=True, seed=recipe.seed, data_seed=recipe.seed,
        bf16=precision == "bf16", use_cpu=device == "cpu", dataloader_num_workers=recipe.workers,
        report_to="none", disable_tqdm=not inputs.progress, remove_unused_columns=False,
    )


class _NoBestModelWarning(logging.Filter):
    """Drops EarlyStoppingCallback's warning that the best model will not be loaded: `_best_model` loads it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without load_best_model_at_end" not in record.getMessage()


_NO_BEST_MODEL_WARNING = _NoBestModelWarning()


def _callbacks(recipe: Recipe, train_set: PixelSet | mix.MixedSet, extra: Sequence[Any]) -> list[Any]:
    from transformers import EarlyStoppingCallback, TrainerCallback

    logging.getLogger("transformers.trainer_callback").addFilter(_NO_BEST_MODEL_WARNING)

    class EpochToDataset(TrainerCallback):  # type: ignore[misc]
        """Augmentation draws per epoch: tell the training set which epoch runs (also after --resume)."""

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            train_set.set_epoch(round(state.epoch or 0))

    callbacks: list[Any] = [EpochToDataset()]
    if recipe.patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.patience))
    return callbacks + list(extra)


def _save_folder(folder: Path, model: Any, processor: Any, resize: ResizeMode) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_preprocess_record(folder, resize)


def _swap_in(new: Path, final: Path) -> None:
    """Replace the model folder with the new one in two renames (a reader never sees half a folder)."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def train(recipe: Recipe, inputs: Inputs, callbacks: Sequence[Any] = ()) -> Outcome:
    """Train, save the model folder, judge it; raises TrainError for anything the operator must fix."""
    from transformers import set_seed

    if (inputs.synthetic is None) != (recipe.synthetic_share == 0.0):
        raise TrainError("--synthetic DIR and --synthetic-share S (0 < S <= 0.9) go together: "
                         f"got {inputs.synthetic or 'no --synthetic'} and share {recipe.synthetic_share}")
    resume_from = check_out(inputs)
    device = resolve_device(inputs.device)
    precision = _precision(recipe, device)
    set_seed(recipe.seed)
    info = inspect_model(recipe.model)
    try:
        resize: ResizeMode = recipe.resize or recorded_resize(recipe.model) or "squash"
        base = roles.model_lineage(recipe.model)
    except (ExpertError, roles.EvalError) as exc:
        raise TrainError(str(exc)) from exc
    split = read_data(inputs, recipe, info.geometry.side, base)
    synthetic = _read_synthetic(inputs, split, info.geometry.side)
    for line in split.table():
        logger.info(line)
    start_out(inputs, split, resumed=resume_from is not None)
    start = load_starting_model(info, recipe.mode, recipe.seed)
    names = data.write_heldout(inputs.out / "dev", split.dev)
    data.write_heldout(inputs.out / "fit", split.fit)
    parts = [part for part in ("dev", "fit") if getattr(split, part)]
    judged: dict[str, dict[str, judge.Verdict]] = {part: {} for part in parts}
    if inputs.judge:
        for part, verdict in _judge_start(start, resize, device, inputs, recipe.seed, parts).items():
            judged[part]["before"] = verdict
    # Teacher labels weigh less: every item then carries its loss weight (RecipeTrainer applies it).
    pixel_set = teacher.WeightedPixelSet if teacher.weighted(split.train) else PixelSet
    real_set = pixel_set(split.train, start, resize, recipe.distortions(), recipe.augment_p, recipe.seed,
                         recipe.regime)
    train_set: PixelSet | mix.MixedSet = real_set
    if synthetic is not None:
        train_set = mix.MixedSet(real_set, pixel_set(synthetic.examples, start, resize, recipe.distortions(),
                                                    recipe.augment_p, recipe.seed, recipe.regime),
                                 recipe.synthetic_share, recipe.seed)
        logger.info("synthetic: {} images of {} ({} dropped: already real or excluded), {} per epoch ({:.0%} of "
                    "its samples); never in dev or fit", len(synthetic.examples), synthetic.source,
                    synthetic.dropped, train_set.per_epoch, recipe.synthetic_share)
    dev_set = PixelSet(split.dev, start, resize)
    weights = class_weights([e.label for e in split.train], start) if recipe.class_weighting else None
    trainer = RecipeTrainer(
        model=start.model, args=_training_arguments(recipe, inputs, device, precision), train_dataset=train_set,
        eval_dataset=dev_set, compute_metrics=make_metrics(start), callbacks=_callbacks(recipe, train_set, callbacks),
        focal_gamma=recipe.focal_gamma, label_smoothing=recipe.label_smoothing, class_weights=weights,
    )
    logger.info("training {} on {} images ({} for early stopping, {} kept for the calibration fit), {} on {}, "
                "resize {}", recipe.model, len(split.train), len(split.dev), len(split.fit), precision, device, resize)
    began = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.monotonic() - began
    _best_model(trainer)
    predicted = trainer.predict(dev_set)
    trainer_p = positive_probability(np.asarray(predicted.predictions, dtype=np.float64), start.positive)
    trainer_probabilities = {names[e.sha256]: float(p) for e, p in zip(split.dev, trainer_p, strict=True)}
    new = inputs.out / "model.new"
    _save_folder(new, trainer.model, start.processor, resize)
    engine_probabilities: dict[str, float] = {}
    if inputs.judge:
        for part in parts:
            judged[part]["after"] = judge.judge(f"after, {part}", new, resize, _eval_device(device),
                                                inputs.out / part, inputs.out / "eval-cache", seed=recipe.seed,
                                                progress=inputs.progress)
        engine_probabilities = dict(zip(judged["dev"]["after"].names, judged["dev"]["after"].probabilities.tolist(),
                                        strict=True))
        judge.write_verdicts(inputs.out / "eval", [v for part in parts for v in judged[part].values()],
                             f"early stopping (dev): {split.dev_from}; calibration fit: {split.fit_from}")
    _write_predictions(inputs.out / "dev-predictions.csv", trainer_probabilities, engine_probabilities)
    state = trainer.state
    record = _record(recipe, inputs, start, split, resize, judged, trainer_probabilities, engine_probabilities,
                     weights, {"epochs_run": float(state.epoch or 0.0),
                               "stopped_early": float(state.epoch or 0.0) < recipe.epochs - 1e-6,
                               "best_checkpoint": state.best_model_checkpoint, "best_metric": state.best_metric,
                               "trainer_dev": _trainer_metrics(predicted.metrics or {}),
                               "train_seconds": train_seconds, "train_images": len(split.train),
                               "teacher_labels": {k: v for k, v in (teacher.teacher_record(split.train) or
                                                                    {"count": 0}).items() if k != "sha256"},
                               "synthetic": None if synthetic is None else {
                                   "source": synthetic.source, "images": len(synthetic.examples),
                                   "dropped": synthetic.dropped, "per_epoch": len(train_set) - len(split.train)},
                               "device": device, "precision": precision})
    record["verdict"] = judge.against_start(judged, recipe.seed)
    card.write_card(new, record)
    trained_on = [*split.train, *(synthetic.examples if synthetic else [])]  # synthetic images are trained on too
    roles.write_lineage(new, (e.sha256 for e in trained_on), (e.sha256 for e in split.dev), base, recipe.model,
                        teacher.teacher_record(split.train))
    _swap_in(new, inputs.out / "model")
    worse = bool(record["verdict"] and record["verdict"]["worse"])
    return Outcome(inputs.out / "model", record, split, trainer_probabilities, engine_probabilities, train_seconds,
                   _summary(record, inputs), worse)


def _best_model(trainer: Any) -> None:
    """Put the best checkpoint's weights in the trainer (loaded the way the miner loads a folder)."""
    import torch
    from transformers import AutoModelForImageClassification

    best = trainer.state.best_model_checkpoint
    if best is None:
        return
    logger.info("keeping the best checkpoint {} (held-out {}: {:.4f})", best, trainer.args.metric_for_best_model,
                trainer.state.best_metric)
    model = AutoModelForImageClassification.from_pretrained(best, dtype=torch.float32).to(trainer.args.device)
    trainer.model = trainer.model_wrapped = model


def _trainer_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {key.removeprefix("test_"): float(value) for key, value in metrics.items()
            if key in ("test_loss", "test_mcc", "test_accuracy")}


def _read_synthetic(inputs: Inputs, split: data.Split, side: int) -> mix.SyntheticSide | None:
    """The --synthetic images that train (none of them a real image of any role, nor excluded)."""
    if inputs.synthetic is None:
        return None
    examples, counts = data.read_sources([inputs.synthetic], kind="auto", min_side=side, progress=inputs.progress)
    taken = {e.sha256 for part in (split.train, split.dev, split.fit) for e in part} | _hashes(inputs.exclude, inputs)
    return mix.keep_for_training(examples, taken, counts[0].source)


def _eval_device(device: str) -> str:
    return "cuda:0" if device == "cuda" else "cpu"


def _judge_start(start: StartingModel, resize: ResizeMode, device: str, inputs: Inputs, seed: int,
                 parts: list[str]) -> dict[str, judge.Verdict]:
    """The starting model (its new head included) judged the way the output will be: saved, then served."""
    folder = inputs.out / "start-model"
    _save_folder(folder, start.model, start.processor, resize)
    try:
        return {part: judge.judge(f"before, {part}", folder, resize, _eval_device(device), inputs.out / part,
                                  inputs.out / "eval-cache", seed=seed, progress=inputs.progress) for part in parts}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_predictions(path: Path, trainer: dict[str, float], engine: dict[str, float]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "trainer_probability", "engine_probability"])
        for name, p in sorted(trainer.items()):
            writer.writerow([name, name.split("/", 1)[0], f"{p:.6f}",
                             f"{engine[name]:.6f}" if name in engine else ""])


def _record(recipe: Recipe, inputs: Inputs, start: StartingModel, split: data.Split, resize: ResizeMode,
            judged: dict[str, dict[str, judge.Verdict]], trainer_p: dict[str, float], engine_p: dict[str, float],
            weights: Any, run: dict[str, Any]) -> dict[str, Any]:
    shared = [name for name in trainer_p if name in engine_p]
    agreement = max((abs(trainer_p[n] - engine_p[n]) for n in shared), default=None)
    label = str(start.model.config.id2label[start.positive])
    return {
        "name": inputs.out.resolve().name, "folder": str((inputs.out / "model").resolve()),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "base_model": recipe.model,
        "recipe": recipe.model_dump(), "resize": resize, "positive_class": start.positive, "positive_label": label,
        "head": start.notes, "dev_from": split.dev_from, "fit_from": split.fit_from,
        "data": [c.as_dict() for c in split.counts],
        "judged": {part: {when: verdict.metrics for when, verdict in verdicts.items()}
                   for part, verdicts in judged.items()},
        "agreement_max_abs": agreement,
        "class_weights": None if weights is None else [float(weights[start.negative]), float(weights[start.positive])],
        "run": run,
    }


def _summary(record: dict[str, Any], inputs: Inputs) -> list[str]:
    run = record["run"]
    lines = [f"model folder: {record['folder']} (resize {record['resize']}, base {record['base_model']})",
             f"trained on {run['train_images']} images in {run['train_seconds']:.1f} s on {run['device']} "
             f"({run['precision']}), {run['epochs_run']:.2f} epochs"
             + (" (stopped early)" if run["stopped_early"] else "")]
    taught = run.get("teacher_labels") or {}
    if taught.get("count"):
        lines.append(f"of which {taught['count']} teacher labels at loss weight {taught['weight']} "
                     f"({', '.join(taught['by_teacher'])}): training only, recorded in the model's sn72_data.json")
    trainer = run["trainer_dev"]
    if "mcc" in trainer:
        lines.append(f"early-stopping images, the trainer's view of the kept model: MCC {trainer['mcc']:.3f}, "
                     f"accuracy {trainer['accuracy']:.3f}")
    for part, blocks in record["judged"].items():
        for title, block in blocks.items():
            mcc = "undef" if block["mcc"] is None else f"{block['mcc']:.3f}"
            lines.append(f"{part} images, {title}: MCC {mcc}, accuracy {block['accuracy']:.3f} ({block['n']} images)")
    if record["agreement_max_abs"] is not None:
        lines.append(f"engine vs trainer on the dev images: max |dp| {record['agreement_max_abs']:.2e}")
    verdict = record.get("verdict")
    if verdict:
        lines.append(verdict["text"])
    if verdict and verdict["worse"]:
        lines.append("no candidate: the model folder is kept for inspection only")
    else:
        lines.append("make a candidate for the cascade (a calibration fitted on the fit images): "
                     f"sn72-train --out {inputs.out} --refit --cascade C; then judge it with sn72-promote")
    return lines
