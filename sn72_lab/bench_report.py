"""Markdown tables of `sn72-bench levels` and `sn72-bench traffic` reports (stdout, and the production run's summary).

    python -m sn72_lab.bench_report OUT     # OUT/levels.json + OUT/traffic.json -> OUT/summary.md (and stdout)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _pair(figures: dict[str, Any] | None) -> str:
    return "-" if not figures else f"{_num(figures.get('p50_ms'))} / {_num(figures.get('p99_ms'))}"


def levels_table(report: dict[str, Any]) -> str:
    lines = [f"Per level on {report['device']} ({report['reps']} timed runs each; images "
             f"{', '.join(report['image_sizes'])}); latency p50 / p99 in ms, memory in GiB",
             "",
             "| level | expert | batch 1 | batch max (size) | images/s at max | held | peak | memory_gb | within |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for index, level in report["levels"].items():
        for name, row in level["experts"].items():
            if "skipped" in row:
                lines.append(f"| {index} | {name} | skipped: {row['skipped']} | | | | | | |")
                continue
            size = row["max_batch"]
            full = row.get(f"batch{size}", {})
            memory = row["memory"]
            held = memory["held_gb"] if memory["held_gb"] is not None else memory["parameters_gb"]
            lines.append(f"| {index} | {name} | {_pair(row['batch1'])} | {_pair(full)} ({size}) | "
                         f"{_num(full.get('images_per_s'), 0)} | {_num(held, 2)} | {_num(memory['peak_gb'], 2)} | "
                         f"{_num(memory['memory_gb'], 1)} | {'yes' if memory['within_memory_gb'] else 'NO'} |")
        if "batch1" in level:
            sizes = ", ".join(f"{k} {v}" for k, v in level["batch_max"].get("sizes", {}).items())
            lines.append(f"| {index} | **{level['name']}: all at once** | {_pair(level['batch1'])} | "
                         f"{_pair(level['batch_max'])} ({sizes}) | | | | | |")
    return "\n".join(lines)


def _levels_run(counts: dict[str, float]) -> str:
    return " / ".join(_num(counts.get(str(n)), 0) for n in range(1, 1 + max((int(k) for k in counts), default=0)))


def traffic_table(report: dict[str, Any]) -> str:
    plan = ", ".join(f"{device} {gb:g}" for device, gb in report.get("planned_gb_by_device", {}).items())
    lines = [f"Through the real miner ({report['timeout_s']:g} s validator timeout; miner ready after "
             f"{_num(report.get('miner_ready_s'))} s; memory_gb planned per GPU: {plan or '-'}); latency p50 / p99 "
             "in ms at the client",
             "",
             "| run | escalation target / planned / measured | requests at rate | p50 / p99 | late (client / miner)"
             " | prior | answers by levels run | mean ms per level | peak GPU GiB (allocated, used) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, run in report["runs"].items():
        latency = run.get("latency_ms") or {}
        memory = "; ".join(f"{device} {_num(k.get('allocated'))}, {_num(k.get('used'))}"
                           for device, k in run.get("device_memory_peak_gb", {}).items()) or "-"
        means = ", ".join(f"{level}: {_num(ms)}" for level, ms in run.get("level_mean_ms", {}).items())
        lines.append(
            f"| {name} | {_num(run.get('target_escalation'), 2)} / {_num(run.get('planned_escalation'), 2)} / "
            f"{_num(run.get('measured_escalation'), 2)} | {run['requests']} at {_num(run['rate_rps'], 0)}/s | "
            f"{_num(latency.get('p50'))} / {_num(latency.get('p99'))} | {run['late_answers']} / "
            f"{run['miner_late']} | {_num(run['answers_from_prior'], 0)} | "
            f"{_levels_run(run['answers_by_levels_run'])} | {means} | {memory} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder holding levels.json and/or traffic.json")
    args = parser.parse_args(argv)
    parts = []
    for name, render in (("levels.json", levels_table), ("traffic.json", traffic_table)):
        path = args.out / name
        if not path.is_file():
            parts.append(f"{name}: missing (that step failed or did not run)")
            continue
        try:
            parts.append(render(json.loads(path.read_text())))
        except (ValueError, KeyError, TypeError) as exc:
            parts.append(f"{name}: unreadable ({type(exc).__name__}: {exc})")
    text = "\n\n".join(parts) + "\n"
    if args.out.is_dir():
        (args.out / "summary.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
