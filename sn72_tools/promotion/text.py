"""The gate's verdict as the lines an operator reads."""

from __future__ import annotations

from typing import Any


def _interval(block: dict[str, Any], digits: int = 3) -> str:
    return (f"{block['estimate']:+.{digits}f} [{block['low']:+.{digits}f}, {block['high']:+.{digits}f}]")


def _number(value: float | None) -> str:
    return "undef" if value is None else f"{value:.3f}"


def format_verdict(result: dict[str, Any]) -> list[str]:
    sides = result["sides"]
    lines = [f"judged on {result['images']} images ({result['counts']}); paired, stratified bootstrap, "
             f"{result['rounds']} resamples, {result['confidence']:.0%} intervals; decided on {result['metric']}"]
    header = f"{'':<10} {'version':<28} {'MCC':>6} {'acc':>6} {'reward':>7} {'policy':>10}  late/prior"
    lines += [header, "-" * len(header)]
    for title, side in sides.items():
        metrics, reward, latency = side["metrics"], side["reward"] or {}, side["latency"] or {}
        late = f"{latency.get('late_rate', 0.0):.3f}/{latency.get('prior_rate', 0.0):.3f}" if latency else "-"
        lines.append(f"{title:<10} {side['version'][:28]:<28} {_number(metrics['mcc']):>6} "
                     f"{_number(metrics['accuracy']):>6} {_number(reward.get('mean')):>7} "
                     f"{side['answer_policy']:>10}  {late}")
    for metric, block in result["differences"].items():
        lines.append(f"candidate - served, {metric:<8}: {_interval(block)}")
    single = result["candidate_best_single_expert"]
    lines.append(f"candidate - its best single expert ({single['expert']}, MCC {_number(single['mcc'])}), MCC: "
                 f"{_interval(single['cascade_minus_expert'])}")
    plan = result["plan"]
    changes = [f"model of {name} -> {model}" for name, model in plan["models"].items()]
    if plan["calibration_changed"]:
        changes.append("the calibration")
    lines.append(f"promotion would change: {', '.join(changes) or 'nothing served'}")
    lines.append(f"decision: {result['decision']['reason']}")
    return lines
