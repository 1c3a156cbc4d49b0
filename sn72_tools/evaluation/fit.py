"""Fit a cascade to the validators' score on recorded outputs, only as far as the data supports it.

On the fit set only (images no model trained on), every class weighted equally:
1. per expert: logistic regression of the label on the raw log-odds -> temperature and bias;
2. per level: logistic regression on the calibrated log-odds of every expert answered up to it -> weights and
   an intercept, so each level's pooled answer is calibrated on its own;
3. the structure: pooling, or the best single expert alone when pooling does not beat it beyond noise;
4. per level: the MCC-best threshold, moved onto 0.5 by the level's monotone map only when it beats 0.5 beyond
   noise on held folds;
5. exit margins: the cheapest whose MCC loss against running every level is within `max_mcc_loss` at the upper
   confidence bound, else none.
Below `min_images` (and a quarter of that per class) the fit is refused: a small set would move thresholds and
margins on noise. Every parameter is reported with its interval (fit_choices.py); the file records the content
identity of each expert's weights and the hashes of the images fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cascade.calibration import CalibrationFile, ExpertFit, FitSource, LevelFit, digest, model_reference
from cascade.config import CascadeConfig, apply_calibration, base_version
from cascade.model_identity import content_identity
from sn72_tools.evaluation import replay
from sn72_tools.evaluation.datasets import EvalError
from sn72_tools.evaluation.fit_choices import (
    FitSettings,
    MarginChoice,
    choose_margins,
    choose_single_cut,
    choose_structure,
    choose_threshold,
    cross_validate,
    parameter_intervals,
    single_expert_margins,
)
from sn72_tools.evaluation.fit_parameters import (
    balanced_weights,
    best_threshold,
    fit_expert,
    fit_parameters,
    raw_logits,
    single_expert,
    threshold_map,
    weighted_mcc,
)

__all__ = ["MIN_FIT_IMAGES", "FitResult", "FitSettings", "best_threshold", "check_fit_size", "fit_cascade",
           "fit_expert", "raw_logits"]

MIN_FIT_IMAGES = 200  # with 200 images an MCC's interval is about +-0.13 wide: thresholds and margins need more
ABSOLUTE_MIN_PER_CLASS = 10


def check_fit_size(labels: np.ndarray, min_images: int = MIN_FIT_IMAGES) -> None:
    """Refuse a fit set below `min_images` images, or below a quarter of that (at least 10) in either class."""
    counts = np.bincount(labels, minlength=2)
    per_class = max(ABSOLUTE_MIN_PER_CLASS, min_images // 4)
    if labels.size < min_images or counts.min() < per_class:
        raise EvalError(
            f"fitting needs at least {min_images} labelled images ({per_class} of each class) that no model "
            f"trained on; the fit set has {labels.size} ({int(counts[0])} of class 0, {int(counts[1])} of class 1). "
            "Label more (sn72-al label), give a larger set, or lower --min-fit-images knowing the fit will be noisy")


@dataclass(frozen=True)
class FitResult:
    calibration: CalibrationFile
    text: str  # the file's exact contents (its hash is in the fitted cascade's version)
    cascade: CascadeConfig  # a copy of the cascade serving this calibration
    margins: MarginChoice
    report: dict[str, Any]  # also in the file: what was chosen, why, and each parameter's interval


def _home(level_columns: list[list[int]], column: int) -> int:
    """The level at which an expert first answers."""
    return next(level for level, columns in enumerate(level_columns) if column in columns)


def _with_calibration(cascade: CascadeConfig, calibration: CalibrationFile, path: Path, text: str,
                      identities: dict[str, str]) -> CascadeConfig:
    fitted = cascade.model_copy(deep=True)
    fitted.calibration = path
    by_model = {e.model: identities[e.name] for e in cascade.experts()}
    apply_calibration(fitted, calibration, digest(text.encode()), identity=by_model.__getitem__)
    return fitted


def _named(report: dict[str, Any], experts: list[str], level_columns: list[list[int]]) -> dict[str, Any]:
    """The intervals keyed by expert names instead of columns."""
    return {"experts": {experts[j]: block for j, block in report["experts"].items()},
            "levels": [{**block, "weights": {experts[c]: w for c, w in block["weights"].items()}}
                       for block in report["levels"]],
            "resamples": report["resamples"]}


def fit_cascade(cascade: CascadeConfig, experts: list[str], outputs: np.ndarray, labels: np.ndarray, *,
                source: FitSource, expert_seconds: dict[str, float], path: Path,
                settings: FitSettings | None = None, min_images: int = MIN_FIT_IMAGES,
                identities: dict[str, str] | None = None) -> FitResult:
    """Fit every parameter on (outputs, labels); `path` is where the calibration file will be written."""
    settings = settings or FitSettings(max_mcc_loss=source.max_mcc_loss, seed=source.seed)
    check_fit_size(labels, min_images)
    source = source.model_copy(deep=True)  # notes are added below
    by_expert = {e.name: e for e in cascade.experts()}
    identities = identities or {name: content_identity(by_expert[name].model) for name in experts}
    column = {name: j for j, name in enumerate(experts)}
    level_columns, answered = [], []
    for level_config in cascade.levels:
        answered += [column[e.name] for e in level_config.experts]
        level_columns.append(list(answered))
    raw = raw_logits(outputs)
    full = fit_parameters(level_columns, raw, labels)
    for j, name in enumerate(experts):
        if not full.informative[j]:
            source.notes.append(f"expert {name} answers no better than chance (or inverted) on the fit split: "
                                f"given the largest temperature; check its positive labels")
    structure = choose_structure(experts, labels, cross_validate(level_columns, raw, labels, settings), settings)
    served, cv = full, None
    if structure.kind == "single":
        assert structure.column is not None
        served = single_expert(full, structure.column)
        source.notes.append(structure.report["reason"])
    cv = cross_validate(level_columns, raw, labels, settings, structure.column)
    pooled = served.pooled(raw)
    weights = balanced_weights(labels)
    fitted_thresholds = [best_threshold(labels, pooled[:, level], weights) for level in range(len(level_columns))]
    thresholds, threshold_reports = [], []
    answering = structure.column if structure.kind == "single" else (0 if len(experts) == 1 else None)
    for level, fitted in enumerate(fitted_thresholds):
        if answering is not None and level == _home(level_columns, answering):
            used, why = choose_single_cut(level, labels, fitted, cv, outputs[:, answering],
                                          float(served.pooled(np.zeros((1, len(experts))))[0, level]), settings)
        else:
            used, why = choose_threshold(level, labels, fitted, cv, settings)
        thresholds.append(used)
        threshold_reports.append(why)
    mapped = np.column_stack([threshold_map(pooled[:, level], t) for level, t in enumerate(thresholds)])
    costs = replay.level_costs(cascade, expert_seconds)
    if structure.kind == "single":
        assert structure.column is not None
        margins_list = single_expert_margins(level_columns, structure.column)
        exits = replay.exit_levels(margins_list, mapped)
        alone = weighted_mcc(labels, np.round(replay.answers_at(mapped, exits)).astype(int), weights)
        margins = MarginChoice(margins_list, alone, alone, replay.mean_cost(costs, exits), float(costs[-1]), 0.0,
                               f"{experts[structure.column]} answers alone: its level always exits")
    else:
        margins = choose_margins(mapped, labels, costs, settings)
    intervals = _named(parameter_intervals(level_columns, raw, labels, full, fitted_thresholds, settings),
                       experts, level_columns)
    expert_fits = {name: ExpertFit(temperature=float(full.temperatures[j]), bias=float(full.biases[j]),
                                   backend=by_expert[name].backend, model=model_reference(by_expert[name].model),
                                   weights=identities[name])
                   for j, name in enumerate(experts)}
    level_fits = [
        LevelFit(name=level.name, weights={experts[c]: float(w) for c, w in zip(columns, level_weights, strict=True)},
                 intercept=float(intercept), threshold=threshold, exit_margin=margin)
        for level, columns, level_weights, intercept, threshold, margin in zip(
            cascade.levels, level_columns, served.level_weights, served.intercepts, thresholds, margins.margins,
            strict=True)
    ]
    for block, why, level_fit in zip(intervals["levels"], threshold_reports, level_fits, strict=True):
        block["threshold"] = {**block["threshold"], **why}
        block["exit_margin"] = level_fit.exit_margin
        block["served"] = {"weights": level_fit.weights, "intercept": level_fit.intercept}  # what the file serves
    report = {
        "settings": {"max_mcc_loss": settings.max_mcc_loss, "folds": settings.folds,
                     "resamples": settings.bootstrap, "confidence": settings.confidence, "min_images": min_images},
        "fit_images": int(labels.size),
        "structure": {"kind": structure.kind, **structure.report},
        "parameters": intervals,
        "margins": {"chosen": margins.margins, "reference_mcc": margins.reference_mcc, "mcc": margins.mcc,
                    "loss_upper": margins.loss_upper, "cost_s": margins.cost_s,
                    "all_levels_cost_s": margins.all_levels_cost_s, "reason": margins.reason},
    }
    draft = CalibrationFile(created=datetime.now(UTC).isoformat(timespec="seconds"),
                            cascade_version=base_version(cascade.version), source=source, experts=expert_fits,
                            levels=level_fits, report=report)
    final = CalibrationFile.model_validate(draft.model_dump())
    text = final.to_json()
    return FitResult(final, text, _with_calibration(cascade, final, path, text, identities), margins, report)
