"""`sn72-eval` / `python -m sn72_tools.evaluation.cli`: evaluate a cascade the way validators score it, and fit it.

    sn72-eval --cascade config/cascade.demo.yaml labelled/            # report
    sn72-eval --cascade config/cascade.demo.yaml labelled/ --fit      # fit on 70%, report on the other 30%
    sn72-eval --cascade C roadwork-test/ --split test --distort centre-crop-224

The set is an image folder (0/ and 1/, or none/ and roadwork/), a CSV (path,label), a parquet file,
a `datasets` folder written by save_to_disk, or an active-learning store (its labelled records).
Outputs go to --out: report.json, report.txt, reliability.png, cost_vs_mcc.png. With --fit also a
candidate: calibration.json and candidate.yaml (the cascade serving it), which only sn72-promote puts in
service, after judging it against the served cascade. Every expert's raw output is cached in --cache,
so a rerun or a refit on the same images runs no model.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pydantic import ValidationError

from cascade.calibration import FitSource
from cascade.config import CascadeConfig, format_validation_error, load_cascade
from cascade.experts.base import ExpertError
from sn72_tools.evaluation import distort, fit, plots, record, report
from sn72_tools.evaluation.datasets import KINDS, EvalError, open_source
from sn72_tools.evaluation.reward import ConsensusModel
from sn72_tools.promotion.candidate import write_candidate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sn72-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path,
                        help="the labelled set (folder, .csv, .parquet, save_to_disk folder, AL store)")
    parser.add_argument("--cascade", type=Path, required=True, help="cascade YAML to evaluate")
    parser.add_argument("--format", choices=KINDS, default="auto", help="what DATA is (default: detected)")
    parser.add_argument("--split", help="split of a saved DatasetDict (default: test, or the only one)")
    parser.add_argument("--image-column", default="image", help="image column of parquet / datasets sets")
    parser.add_argument("--label-column", default="label", help="label column of parquet / datasets sets")
    parser.add_argument("--distort", choices=list(distort.DISTORTIONS), default="native",
                        help="conditions validators have used (default: native, the image as stored)")
    parser.add_argument("--out", type=Path, default=Path("eval-out"), help="folder for the report and figures")
    parser.add_argument("--cache", type=Path, default=Path(".eval-cache"), help="folder of the raw-output cache")
    parser.add_argument("--latency-sample", type=int, default=100, metavar="N",
                        help="requests sent one at a time through the normal path to measure latency (0: none)")
    parser.add_argument("--deadline-s", type=float, default=8.4,
                        help="deadline of those requests (the miner's default: 9 s timeout - 0.6 s margin)")
    parser.add_argument("--reward-trials", type=int, default=2000, help="resampled windows per reward estimate")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, distortions, samples and resampling")
    parser.add_argument("--fit", action="store_true", help="fit the calibration on part of the set")
    parser.add_argument("--holdout", type=float, default=0.3,
                        help="share of the set held out from fitting to report on (--fit); 0: fit on every image "
                             "(the report is then on the fit set itself: judge the candidate with sn72-promote)")
    parser.add_argument("--max-mcc-loss", type=float, default=0.01,
                        help="MCC the fitted exits may lose against running every level (--fit)")
    parser.add_argument("--min-fit-images", type=int, default=fit.MIN_FIT_IMAGES,
                        help=f"refuse to fit on fewer images (a quarter of it per class; default {fit.MIN_FIT_IMAGES})")
    parser.add_argument("--fit-resamples", type=int, default=200,
                        help="resamples behind each fitted parameter's interval and each choice (default 200)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of the fit's choices (default 5)")
    parser.add_argument("--confidence", type=float, default=0.95, help="coverage of the fit's intervals")
    parser.add_argument("--consensus-share", type=float, default=0.1,
                        help="share of scored rounds that are consensus tasks in the reward estimate (default 0.1)")
    parser.add_argument("--calibration-out", type=Path,
                        help="where --fit writes the candidate calibration (default OUT/calibration.json; never "
                             "the file the cascade serves: sn72-promote installs it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0.0 <= args.holdout < 1.0:
        parser.error(f"--holdout must lie in [0, 1), got {args.holdout}")
    if not 0.0 <= args.max_mcc_loss <= 1.0:
        parser.error(f"--max-mcc-loss must lie between 0 and 1, got {args.max_mcc_loss}")
    if args.latency_sample < 0 or args.reward_trials < 1 or args.deadline_s <= 0:
        parser.error("--latency-sample must be >= 0, --reward-trials >= 1 and --deadline-s > 0")
    if args.min_fit_images < 40 or args.fit_resamples < 20 or args.folds < 2 or not 0.5 < args.confidence < 1.0:
        parser.error("--min-fit-images must be >= 40, --fit-resamples >= 20, --folds >= 2, --confidence in (0.5, 1)")
    if not 0.0 <= args.consensus_share <= 1.0:
        parser.error(f"--consensus-share must lie between 0 and 1, got {args.consensus_share}")


def _load(path: Path) -> CascadeConfig:
    try:
        return load_cascade(path)
    except ValidationError as exc:
        raise EvalError(f"invalid cascade {path}:\n{format_validation_error(exc)}") from exc
    except ValueError as exc:
        raise EvalError(f"invalid cascade {path}: {exc}") from exc


def _split(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        fit_rows, held_rows = train_test_split(np.arange(labels.size), test_size=holdout, stratify=labels,
                                               random_state=seed)
    except ValueError as exc:
        raise EvalError(f"cannot hold {holdout:.0%} out with both classes on each side: {exc}") from exc
    return np.sort(fit_rows), np.sort(held_rows)


def _complete_costs(experts: list[str], measured: dict[str, float], notes: list[str]) -> dict[str, float]:
    if all(name in measured for name in experts):
        return measured
    notes.append("expert costs were never measured (no inference ran): costs count expert runs, 1 s each")
    return {name: 1.0 for name in experts}


def _calibration_out(args: argparse.Namespace, cascade: CascadeConfig) -> Path:
    """Where --fit writes its candidate calibration: never the file the cascade serves."""
    path = Path(args.calibration_out or args.out / "calibration.json").resolve()
    if cascade.calibration is not None and path == cascade.calibration:
        raise EvalError(f"--fit writes a candidate, never the calibration the cascade serves ({path}): give another "
                        "--calibration-out, then judge it with sn72-promote, which installs it")
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    cascade = _load(args.cascade)
    if args.fit:
        _calibration_out(args, cascade)  # before any model runs
    source = open_source(args.data, args.format, args.split, args.image_column, args.label_column)
    progress = not args.no_progress
    args.out.mkdir(parents=True, exist_ok=True)
    engine = record.EvalEngine(cascade)
    cache = record.OutputCache(args.cache)
    latency: dict[str, Any] | None = None
    try:
        recording = record.record(source, cascade, engine, cache, distortion=args.distort, seed=args.seed,
                                  sample_size=args.latency_sample, progress=progress)
        if recording.labels.size == 0:
            first = recording.skipped[0] if recording.skipped else None
            raise EvalError(f"{source.describe()}: no image could be run ({len(recording.skipped)} skipped"
                            + (f"; first: {first.name}: {first.reason})" if first else ")"))
        if recording.sample:
            latency = record.measure_latency(engine, recording.sample, args.deadline_s,
                                             [level.name for level in cascade.levels], progress)
    finally:
        engine.close()
        cache.close()
    notes = list(source.notes)
    costs = _complete_costs(recording.experts, recording.expert_seconds, notes)
    rates = {"late_rate": latency["late_rate"], "prior_rate": latency["prior_rate"]} if latency else {}
    if not latency:
        notes.append("no latency sample: the reward assumes no late answers and no answers from the prior")
    shared = {"expert_seconds": costs, "trials": args.reward_trials, "seed": args.seed,
              "consensus_model": ConsensusModel(share=args.consensus_share), **rates}
    counts = {str(c): int((recording.labels == c).sum()) for c in (0, 1)}
    fit_summary: dict[str, Any] | None = None
    if args.fit and args.holdout == 0.0:
        fit_rows, held_rows = np.arange(recording.labels.size), np.arange(0)
        evaluated_on = (f"the fit set itself ({fit_rows.size} images, --holdout 0): the fitted figures are "
                        "optimistic; sn72-promote judges the candidate on a judge set")
        fitted, fit_summary = _fit(args, cascade, source.describe(), source.kind, recording, fit_rows, held_rows,
                                   counts, costs, evaluated_on)
        # Both judged with one crowd of simulated miners (the fitted experts'): only the cascade differs.
        crowd = report.population(fitted, recording.experts, recording.outputs)
        evaluations = {
            "before (as configured, fit set)": report.evaluate(cascade, recording.experts, recording.outputs,
                                                               recording.labels, crowd=crowd, **shared),
            "after (fitted, on its own fit set)": report.evaluate(fitted, recording.experts, recording.outputs,
                                                                  recording.labels, crowd=crowd, **shared),
        }
    elif args.fit:
        fit_rows, held_rows = _split(recording.labels, args.holdout, args.seed)
        evaluated_on = (f"held out: {held_rows.size} of {recording.labels.size} images ({args.holdout:.0%}, "
                        f"stratified, seed {args.seed}); fitted on the other {fit_rows.size}")
        fitted, fit_summary = _fit(args, cascade, source.describe(), source.kind, recording, fit_rows, held_rows,
                                   counts, costs, evaluated_on)
        held = recording.subset(held_rows)
        crowd = report.population(fitted, held.experts, held.outputs)
        evaluations = {
            "before (as configured)": report.evaluate(cascade, held.experts, held.outputs, held.labels, crowd=crowd,
                                                      **shared),
            "after (fitted)": report.evaluate(fitted, held.experts, held.outputs, held.labels, crowd=crowd, **shared),
        }
    else:
        evaluated_on = f"all {recording.labels.size} images (no fit in this run)"
        evaluations = {"as configured": report.evaluate(cascade, recording.experts, recording.outputs,
                                                        recording.labels, **shared)}
    total = recording.labels.size + len(recording.skipped)
    result: dict[str, Any] = {
        "tool": "sn72-eval",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "cascade": {"path": str(args.cascade), "version": cascade.version,
                    "calibration": str(cascade.calibration) if cascade.calibration else None},
        "distortion": args.distort,
        "seed": args.seed,
        "dataset": {"source": source.describe(), "images": int(recording.labels.size), "counts": counts,
                    "skipped_count": len(recording.skipped),
                    "skipped": [{"name": s.name, "reason": s.reason} for s in recording.skipped], "notes": notes},
        "recording": {"images": total, "inferred": recording.inferred, "cached": recording.cached,
                      "seconds": recording.seconds, "startup_s": recording.startup_s,
                      "seconds_per_1000_images": (recording.seconds - recording.startup_s) / total * 1000,
                      "expert_seconds_per_image": recording.expert_seconds},
        "evaluated_on": evaluated_on,
        "evaluations": {title: evaluation.summary for title, evaluation in evaluations.items()},
        "latency": latency,
        "fit": fit_summary,
        "files": {name: str(args.out / name) for name in
                  ("report.json", "report.txt", "reliability.png", "cost_vs_mcc.png")},
    }
    plots.reliability_diagram(evaluations, args.out / "reliability.png")
    plots.cost_vs_mcc(evaluations, args.out / "cost_vs_mcc.png")
    report.write_json(result, args.out / "report.json")
    (args.out / "report.txt").write_text(report.format_report(result))
    return result


def _fit(args: argparse.Namespace, cascade: CascadeConfig, described: str, kind: str, recording: record.Recording,
         fit_rows: np.ndarray, held_rows: np.ndarray, counts: dict[str, int], costs: dict[str, float],
         split: str) -> tuple[CascadeConfig, dict[str, Any]]:
    path = _calibration_out(args, cascade)
    part = recording.subset(fit_rows)
    source = FitSource(dataset=described, kind=kind, distortion=args.distort, images=int(recording.labels.size),
                       counts=counts, fit_images=int(fit_rows.size), held_out_images=int(held_rows.size),
                       split=split, seed=args.seed, max_mcc_loss=args.max_mcc_loss, expert_seconds=costs,
                       fit_sha256=sorted(set(part.hashes)))
    settings = fit.FitSettings(max_mcc_loss=args.max_mcc_loss, folds=args.folds, bootstrap=args.fit_resamples,
                               confidence=args.confidence, seed=args.seed)
    result = fit.fit_cascade(cascade, part.experts, part.outputs, part.labels, source=source, expert_seconds=costs,
                             path=path, settings=settings, min_images=args.min_fit_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.text)
    candidate = write_candidate(args.cascade, args.out, path)
    steps = [f"candidate: {candidate} (serving {path}); nothing served changed",
             f"judge it against the served cascade: sn72-promote --cascade {args.cascade} --candidate {candidate} "
             "--judge JUDGE-SET"]
    margins = result.margins
    summary = {"calibration": str(path), "candidate": str(candidate), "fit_images": int(fit_rows.size),
               "split": split, "max_mcc_loss": args.max_mcc_loss, "reference_mcc": margins.reference_mcc,
               "mcc": margins.mcc, "cost_s": margins.cost_s, "all_levels_cost_s": margins.all_levels_cost_s,
               "fitted_version": result.cascade.version, "report": result.report,
               "notes": result.calibration.source.notes, "next_steps": steps}
    return result.cascade, summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logger.remove()
    logger.add(sys.stderr, level="INFO")  # model loading is the long part before the first progress bar
    try:
        result = run(args)
    except (EvalError, ExpertError, OSError) as exc:  # bad input, a model that will not load, a full disk
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(report.format_report(result))
    print(f"wrote {', '.join(result['files'].values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
