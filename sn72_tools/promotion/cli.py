"""`sn72-promote`: serve a candidate only when it beats what is served beyond noise, on a frozen judge set.

    sn72-promote --cascade config/cascade.production.yaml --candidate runs/ft2/candidate/candidate.yaml \\
        --judge judge-set/

A candidate is a cascade YAML that `sn72-eval --fit` or `sn72-train --refit` wrote into its own output folder
(a new calibration, new weights for some experts, or both). Both cascades answer every judge image through the
engine (eval mode, outputs cached); the paired differences in MCC, accuracy and the reward estimate are reported
with bootstrap intervals. When the candidate is better beyond noise the served cascade is edited (calibration,
models, release) and the command to reload is printed: exit 0. Otherwise nothing changes: exit 3 with the reason.
Bad input (a judge set that shares images with a model's training or a calibration's fit, a judge set other than
the frozen one or smaller than --min-judge-images, a candidate already judged on another judge set, a candidate
that changes more than models and calibration): exit 2. Every look, dry runs included, is recorded beside the
served cascade (promotions/<stem>/: judge.json, verdicts.jsonl).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import ValidationError

from cascade.config import CascadeConfig, format_validation_error, load_cascade
from cascade.experts.base import ExpertError
from sn72_tools.evaluation import record
from sn72_tools.evaluation.datasets import KINDS, EvalError, open_source
from sn72_tools.evaluation.report import write_json
from sn72_tools.evaluation.roles import cascade_roles, check_disjoint, source_hashes
from sn72_tools.promotion import gate, install, judge_set
from sn72_tools.promotion.text import format_verdict

PROMOTED, REFUSED, BAD_INPUT = 0, 3, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sn72-promote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cascade", type=Path, required=True, help="the served cascade YAML (edited on promotion)")
    parser.add_argument("--candidate", type=Path, required=True, help="the candidate cascade YAML")
    parser.add_argument("--judge", type=Path, required=True, help="the labelled judge set (frozen on first use)")
    parser.add_argument("--format", choices=KINDS, default="auto", help="what --judge is (default: detected)")
    parser.add_argument("--split", help="split of a saved DatasetDict")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--metric", choices=gate.METRICS, default="mcc", help="the figure that decides (default mcc)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default 0.95)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resampled judge sets (default 2000)")
    parser.add_argument("--consensus-share", type=float, default=0.1,
                        help="share of scored rounds that are consensus tasks in the reward estimate (default 0.1)")
    parser.add_argument("--latency-sample", type=int, default=50,
                        help="requests per side through the normal path, for late answers and the prior (0: none)")
    parser.add_argument("--deadline-s", type=float, default=8.4, help="their deadline (default 8.4 s)")
    parser.add_argument("--min-judge-images", type=int, default=judge_set.MIN_JUDGE_IMAGES,
                        help=f"refuse a smaller judge set (a quarter of it per class; default "
                             f"{judge_set.MIN_JUDGE_IMAGES})")
    parser.add_argument("--new-judge", action="store_true",
                        help="start a new frozen judge set (the old is kept); never for a candidate already judged")
    parser.add_argument("--dry-run", action="store_true",
                        help="compare and report; change nothing served (the look is recorded like any other)")
    parser.add_argument("--cache", type=Path, default=Path(".eval-cache"), help="the eval tool's output cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _load(path: Path, what: str) -> CascadeConfig:
    try:
        return load_cascade(path)
    except ValidationError as exc:
        raise EvalError(f"invalid {what} {path}:\n{format_validation_error(exc)}") from exc
    except (ValueError, OSError) as exc:
        raise EvalError(f"invalid {what} {path}: {exc}") from exc


def run(args: argparse.Namespace) -> tuple[int, list[str], dict[str, Any]]:
    served, candidate = _load(args.cascade, "served cascade"), _load(args.candidate, "candidate")
    plan = install.changes(args.cascade, served, args.candidate, candidate)
    # Always beside the served cascade: a history elsewhere would be a fresh, unfrozen judge.
    history = args.cascade.resolve().parent / "promotions" / args.cascade.stem
    source = open_source(args.judge, args.format, args.split, args.image_column, args.label_column)
    judged = source_hashes(args.judge, args.format, args.split, args.image_column, args.label_column)
    roles, notes = cascade_roles(served, "served")
    candidate_roles, candidate_notes = cascade_roles(candidate, "candidate")
    check_disjoint(judged, {**roles, **candidate_roles})
    judge_set.check_size(judged, args.min_judge_images)
    who, which = judge_set.candidate_fingerprint(candidate), judge_set.fingerprint(set(judged))
    if args.new_judge:
        judge_set.check_not_rescued(history, who, which)
    lines = [judge_set.check_frozen(history, judged, source.describe(), args.new_judge)]
    lines += [f"note: {note}" for note in [*notes, *candidate_notes]]
    settings = gate.GateSettings(metric=args.metric, confidence=args.confidence, rounds=args.bootstrap,
                                 consensus_share=args.consensus_share, latency_sample=args.latency_sample,
                                 deadline_s=args.deadline_s, seed=args.seed, progress=not args.no_progress)
    cache = record.OutputCache(args.cache)
    try:
        sides = [gate.run_side(title, cascade, source, cache, settings)
                 for title, cascade in (("served", served), ("candidate", candidate))]
    finally:
        cache.close()
    verdict = gate.compare(sides[0], sides[1], settings)
    nothing = not plan["models"] and not plan["calibration_changed"]
    if verdict.promote and nothing:
        verdict.promote, verdict.reason = False, "promoting would change nothing served"
    judge_set.log_verdict(history, who, which, verdict.promote, verdict.reason, args.dry_run)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    record_folder = history / f"{stamp}-{'promoted' if verdict.promote and not args.dry_run else 'refused'}"
    result: dict[str, Any] = {
        "tool": "sn72-promote", "created": stamp, "served": str(args.cascade), "candidate": str(args.candidate),
        "judge": source.describe(), "dry_run": args.dry_run, "notes": [*notes, *candidate_notes],
        "plan": {"models": plan["models"], "calibration_changed": plan["calibration_changed"]}, **verdict.report,
    }
    lines += format_verdict(result)
    code = REFUSED
    if verdict.promote and args.dry_run:
        lines.append("dry run: the candidate would be promoted; nothing changed")
        code = PROMOTED
    elif verdict.promote:
        written = install.install(args.cascade, plan, record_folder)
        result["installed"] = written
        lines += [f"promoted: {what} -> {value}" for what, value in written.items()]
        lines.append(f"reload the miner to serve it: pm2 sendSignal SIGHUP sn72-miner (the old {args.cascade.name} "
                     f"is kept in {record_folder})")
        code = PROMOTED
    else:
        lines.append(f"refused: {verdict.reason}; nothing changed")
    if not args.dry_run:
        record_folder.mkdir(parents=True, exist_ok=True)
        write_json(result, record_folder / "report.json")
        (record_folder / "report.txt").write_text("\n".join(lines) + "\n")
        lines.append(f"report: {record_folder / 'report.txt'}")
    return code, lines, result


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.5 < args.confidence < 1.0 or args.bootstrap < 100 or not 0.0 <= args.consensus_share <= 1.0:
        parser.error("--confidence must lie in (0.5, 1), --bootstrap be at least 100, --consensus-share in [0, 1]")
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    try:
        code, lines, _ = run(args)
    except (EvalError, ExpertError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
