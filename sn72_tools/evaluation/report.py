"""What the eval reports, per expert, per level and for the cascade as deployed; JSON and a readable table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade import consensus
from cascade.answer import shaped_probability
from cascade.config import AnswerConfig, CascadeConfig
from sn72_tools.evaluation import replay
from sn72_tools.evaluation.bootstrap import metric_interval
from sn72_tools.evaluation.fit_parameters import raw_logits
from sn72_tools.evaluation.metrics import binary_metrics
from sn72_tools.evaluation.reward import ConsensusModel, estimate_reward
from sn72_tools.evaluation.scoring import mcc

SWEEP = np.round(np.arange(0.0, 0.5 + 1e-9, 0.05), 2)


@dataclass
class Evaluation:
    """One cascade judged on one set of recorded outputs: a JSON summary, and the arrays the plots need."""

    summary: dict[str, Any]
    labels: np.ndarray
    probabilities: dict[str, np.ndarray]  # expert names, then "deployed"
    sweep: list[dict[str, float]]  # uniform exit margin -> cost and MCC
    deployed_point: tuple[float, float]  # (expert-seconds per image, MCC)


def _block(labels: np.ndarray, probabilities: np.ndarray, reward_args: dict[str, Any]) -> dict[str, Any]:
    block = binary_metrics(labels, probabilities).as_dict()
    if block["mcc"] is not None:  # how far the figure could move on another set of this size
        block["mcc_interval"] = metric_interval(labels, np.round(probabilities).astype(int), rounds=1000,
                                                seed=reward_args.get("seed", 0)).as_dict()
    estimate = estimate_reward(labels, probabilities, **reward_args)
    block["reward"] = estimate.as_dict() if estimate is not None else None
    if estimate is None:
        block["notes"].append("reward not estimated: uniform labels cannot be drawn from a set with one class")
    return block


POLICIES = ("calibrated", "decisive")


def population(cascade: CascadeConfig, experts: list[str], outputs: np.ndarray) -> np.ndarray:
    """(images, experts): each expert's calibrated log-odds, which the simulated other miners start from."""
    by_name = {e.name: e for e in cascade.experts()}
    raw = raw_logits(outputs)
    return np.column_stack([raw[:, j] / by_name[name].calibration.temperature + by_name[name].calibration.bias
                            for j, name in enumerate(experts)])


def shaped_answers(probabilities: np.ndarray, answer: AnswerConfig) -> np.ndarray:
    """What validators would be sent for each answered image under `answer`'s policy."""
    return np.array([shaped_probability(float(p), True, answer) for p in probabilities])


def evaluate(cascade: CascadeConfig, experts: list[str], outputs: np.ndarray, labels: np.ndarray, *,
             expert_seconds: dict[str, float], late_rate: float = 0.0, prior_rate: float = 0.0,
             trials: int = 2000, seed: int = 0, consensus_model: ConsensusModel | None = None,
             crowd: np.ndarray | None = None) -> Evaluation:
    """Every metric of every expert, every level (all images run to it) and the deployed cascade.

    Rewards model consensus tasks (`consensus_model`, default ConsensusModel()) whose other miners start from
    `crowd` ((images, k) log-odds; default: this cascade's calibrated experts; give two evaluations the same crowd
    to compare them); the deployed cascade's reward is given under its answer policy and under each
    (`reward_by_policy`).
    """
    consensus_model = consensus_model or ConsensusModel()
    pooling = consensus.Pooling.from_config(cascade)
    levels = replay.level_probabilities(cascade, pooling, experts, outputs)
    margins = replay.pooling_margins(pooling)
    exits = replay.exit_levels(margins, levels)
    deployed = replay.answers_at(levels, exits)
    costs = replay.level_costs(cascade, expert_seconds)
    plain: dict[str, Any] = {"trials": trials, "seed": seed, "consensus": consensus_model,
                             "population": population(cascade, experts, outputs) if crowd is None else crowd}
    summary: dict[str, Any] = {
        "images": int(labels.size),
        "experts": {name: {**_block(labels, outputs[:, j], plain), "expert_seconds_per_image":
                           expert_seconds.get(name)} for j, name in enumerate(experts)},
        "levels": [
            {"name": level.name, "exit_margin": margins[index], **_block(labels, levels[:, index], plain),
             "expert_seconds_per_image": float(costs[index])}
            for index, level in enumerate(cascade.levels)
        ],
    }
    exit_counts = np.bincount(exits, minlength=len(cascade.levels))
    served: dict[str, Any] = {**plain, "late_rate": late_rate, "prior_rate": prior_rate, "prior": cascade.prior}
    by_policy = {}
    for policy in POLICIES:
        answer = cascade.answer.model_copy(update={"policy": policy})
        estimate = estimate_reward(labels, shaped_answers(deployed, answer), **served)
        by_policy[policy] = None if estimate is None else estimate.as_dict()
    summary["deployed"] = {
        **_block(labels, deployed, served),
        "exit_levels": {level.name: int(exit_counts[i]) for i, level in enumerate(cascade.levels)},
        "expert_seconds_per_image": replay.mean_cost(costs, exits),
        "all_levels_expert_seconds_per_image": float(costs[-1]),
        "answer_policy": cascade.answer.policy,
        "reward_by_policy": by_policy,
        "consensus": consensus_model.as_dict(),
    }
    summary["deployed"]["reward"] = by_policy[cascade.answer.policy]
    sweep = []
    for margin in SWEEP.tolist():
        uniform = replay.exit_levels([margin] * len(cascade.levels), levels)
        sweep.append({"exit_margin": margin, "expert_seconds_per_image": replay.mean_cost(costs, uniform),
                      "mcc": mcc(labels, replay.answers_at(levels, uniform))})
    probabilities = {name: outputs[:, j] for j, name in enumerate(experts)} | {"deployed": deployed}
    point = (summary["deployed"]["expert_seconds_per_image"], mcc(labels, deployed))
    return Evaluation(summary, labels, probabilities, sweep, point)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _number(value: float | None, digits: int = 3) -> str:
    return "undef" if value is None else f"{value:.{digits}f}"


def _row(name: str, block: dict[str, Any]) -> str:
    c = block["confusion"]
    reward = block.get("reward") or {}
    cost = block.get("expert_seconds_per_image")
    return (f"{name[:28]:<28} {block['n']:>6} {_number(block['mcc']):>6} {_number(block['accuracy']):>6} "
            f"{_number(block['precision']):>6} {_number(block['recall']):>6} {_number(block['roc_auc']):>6} "
            f"{_number(block['brier']):>6} {_number(block['ece']):>6} {_number(reward.get('mean')):>6} "
            f"{_number(reward.get('p5')):>6} {'-' if cost is None else f'{cost * 1000:.2f}':>8}  "
            f"{c['tn']}/{c['fp']}/{c['fn']}/{c['tp']}")


def format_evaluation(title: str, summary: dict[str, Any]) -> str:
    header = (f"{title[:28]:<28} {'n':>6} {'MCC':>6} {'acc':>6} {'prec':>6} {'recall':>6} {'AUC':>6} "
              f"{'Brier':>6} {'ECE':>6} {'reward':>6} {'rw p5':>6} {'exp-ms':>8}  tn/fp/fn/tp")
    lines = [header, "-" * len(header)]
    lines += [_row(f"expert {name}", block) for name, block in summary["experts"].items()]
    lines += [_row(f"level {i + 1} {level['name']}", level) for i, level in enumerate(summary["levels"])]
    deployed = summary["deployed"]
    lines.append(_row("deployed cascade", deployed))
    if deployed.get("mcc_interval"):
        interval = deployed["mcc_interval"]
        lines.append(f"deployed MCC {interval['estimate']:.3f}, 95% interval [{interval['low']:.3f}, "
                     f"{interval['high']:.3f}] (stratified bootstrap of these {deployed['n']} images)")
    exits = ", ".join(f"{name} {count}" for name, count in deployed["exit_levels"].items())
    lines.append(f"exits (replayed): {exits}; expert-ms per image {deployed['expert_seconds_per_image'] * 1000:.2f}"
                 f" (every level: {deployed['all_levels_expert_seconds_per_image'] * 1000:.2f})")
    policies = ", ".join(f"{policy} {_number((estimate or {}).get('mean'))}"
                         for policy, estimate in deployed.get("reward_by_policy", {}).items())
    if policies:
        lines.append(f"reward by answer policy (consensus tasks {deployed['consensus']['share']:.0%} of rounds): "
                     f"{policies}; served: {deployed['answer_policy']}")
    blocks = [*(("expert " + name, block) for name, block in summary["experts"].items()),
              *((f"level {i + 1}", level) for i, level in enumerate(summary["levels"])), ("deployed", deployed)]
    lines += [f"note ({name}): {note}" for name, block in blocks for note in block["notes"]]
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """The readable table: what was read, then each evaluation, latency and the fit."""
    data = report["dataset"]
    lines = [f"cascade {report['cascade']['path']} (version {report['cascade']['version']}, "
             f"calibration {report['cascade']['calibration'] or 'none'})",
             f"set {data['source']}: {data['images']} images ({data['counts']}), distortion {report['distortion']}, "
             f"{data['skipped_count']} skipped"]
    lines += [f"  skipped {s['name']}: {s['reason']}" for s in data["skipped"][:20]]
    lines += [f"  note: {note}" for note in data["notes"]]
    rec = report["recording"]
    lines.append(f"recorded {rec['images']} images in {rec['seconds']:.1f} s ({rec['inferred']} through the engine, "
                 f"{rec['cached']} from the cache; {rec['startup_s']:.1f} s loading models): "
                 f"{rec['seconds_per_1000_images']:.1f} s per 1,000 images after loading")
    lines.append(f"evaluated on: {report['evaluated_on']}")
    for title, summary in report["evaluations"].items():
        lines += ["", format_evaluation(title, summary)]
    latency = report.get("latency")
    if latency and latency["sample"]:
        lines += ["", f"normal path, {latency['sample']} requests one at a time (deadline {latency['deadline_s']} s): "
                  f"mean {latency['mean_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms, late {latency['late']}, "
                  f"exits {latency['exit_levels']}"]
    fit = report.get("fit")
    if fit:
        lines += ["", f"fit: wrote {fit['calibration']} on {fit['fit_images']} images ({fit['split']}); "
                  f"MCC every level {fit['reference_mcc']:.3f}, with the fitted exits {fit['mcc']:.3f} "
                  f"(bound {fit['max_mcc_loss']}); expert-ms per image {fit['cost_s'] * 1000:.2f} "
                  f"(every level {fit['all_levels_cost_s'] * 1000:.2f})"]
        lines += [f"  {line}" for line in fit_lines(fit["report"])]
        lines += [f"  note: {note}" for note in fit.get("notes", [])]
        lines += [f"  {line}" for line in fit["next_steps"]]
    return "\n".join(lines) + "\n"


def _interval(block: dict[str, Any]) -> str:
    return f"{block['estimate']:.3f} [{block['low']:.3f}, {block['high']:.3f}]"


def fit_lines(fit_report: dict[str, Any]) -> list[str]:
    """What a fit chose, why, and every fitted parameter with its interval."""
    parameters = fit_report["parameters"]
    structure = fit_report["structure"]
    lines = [f"structure: {structure['kind']} ({structure['reason']})",
             f"intervals: {fit_report['settings']['confidence']:.0%}, from {parameters['resamples']} refits on "
             f"resampled fit sets; choices cross-validated on {fit_report['settings']['folds']} folds"]
    for name, block in parameters["experts"].items():
        lines.append(f"expert {name}: temperature {_interval(block['temperature'])}, bias {_interval(block['bias'])}")
    single = structure["kind"] == "single"
    for index, block in enumerate(parameters["levels"]):
        weights = ", ".join(f"{name} {_interval(w)}" for name, w in block["weights"].items())
        threshold = block["threshold"]
        if single:
            served = ", ".join(f"{name} {w:g}" for name, w in block["served"]["weights"].items())
            lines.append(f"level {index + 1}: serves weights {served} (one expert alone); the pooled fit was "
                         f"{weights}; intercept {_interval(block['intercept'])}")
        else:
            lines.append(f"level {index + 1}: weights {weights}; intercept {_interval(block['intercept'])}")
        lines.append(f"  threshold: best cut {_interval(threshold)}, used {threshold['used']:.3f} "
                     f"({threshold['reason']}); exit margin {block['exit_margin']}")
    lines.append(f"exit margins {fit_report['margins']['chosen']}: {fit_report['margins']['reason']}")
    return lines
