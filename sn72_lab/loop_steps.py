"""The steps of `sn72-loop`, each the operator's own command run as a subprocess, and the live comparison.

Every step is a tool an operator runs by hand (`sn72-train`, `sn72-al`, `sn72-query`, `sn72-promote`, the miner
under its config); the loop only wires their files together, logs each command's output to its own file and
reads back what it wrote. Nothing here reaches into the tools' internals.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sn72_tools.evaluation.bootstrap import metric_interval, paired_difference


@dataclass
class Step:
    """One command's outcome: its exit code, where its output went, how long it took."""

    name: str
    code: int
    log: Path
    seconds: float

    def tail(self, lines: int = 12) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def run_tool(name: str, module: str, args: list[str], logs: Path, ok: tuple[int, ...] = (0,)) -> Step:
    """`python -m module args...` with its output in logs/name.log; raises unless its exit code is in `ok`."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    began = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1"}
    with log.open("w") as handle:
        handle.write(f"$ python -m {module} {' '.join(args)}\n")
        handle.flush()
        code = subprocess.run([sys.executable, "-m", module, *args], stdout=handle, stderr=subprocess.STDOUT,
                              env=env, check=False).returncode
    step = Step(name, code, log, time.monotonic() - began)
    if code not in ok:
        raise RuntimeError(f"{name} exited {code} (expected {ok}); the end of {log}:\n{step.tail()}")
    return step


def metric_value(metrics_port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample from the miner's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = labels or {}
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + ("{" if wanted else "")) and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in wanted.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def reloads_done(metrics_port: int) -> float:
    return metric_value(metrics_port, "sn72_miner_reloads_total")


def last_reload(metrics_port: int) -> str:
    """The state the miner's `sn72_miner_last_reload` enum is in."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("sn72_miner_last_reload{") and line.endswith(" 1.0"):
                return re.findall(r'sn72_miner_last_reload="([^"]*)"', line)[0]
    return "unknown"


def wait_for_reload(process: subprocess.Popen[str], metrics_port: int, timeout_s: float = 300.0) -> str:
    """SIGHUP the miner and wait until its reload ends; the outcome (a refusal raises)."""
    import signal

    before = reloads_done(metrics_port)
    process.send_signal(signal.SIGHUP)
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if reloads_done(metrics_port) > before:
            outcome = last_reload(metrics_port)
            if outcome.startswith(("refused", "failed")):
                raise RuntimeError(f"the miner refused the promoted cascade: {outcome}")
            return outcome
        time.sleep(0.5)
    raise RuntimeError("the miner's reload did not end in time")


def read_predictions(path: Path) -> dict[str, tuple[int, float, int]]:
    """sha256 -> (label, prediction, status code) from `sn72-query --predictions`."""
    rows = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            rows[row["sha256"]] = (int(row["label"]), float(row["prediction"]), int(row["status_code"]))
    return rows


def live_comparison(before: Path, after: Path, seed: int, rounds: int = 2000) -> dict[str, Any]:
    """Live MCC before and after on the same images, each with its interval, and the paired difference.

    A request that was not answered (any status but 200, or a prediction outside [0, 1]) counts as a wrong answer:
    a validator scores it 0 and it takes a window slot.
    """
    first, second = read_predictions(before), read_predictions(after)
    shared = sorted(set(first) & set(second))
    labels = np.array([first[h][0] for h in shared])

    def answers(rows: dict[str, tuple[int, float, int]]) -> tuple[np.ndarray, int]:
        out, missed = [], 0
        for h in shared:
            label, prediction, status = rows[h]
            if status != 200 or not 0.0 <= prediction <= 1.0:
                missed += 1
                out.append(1 - label)
            else:
                out.append(int(np.round(prediction)))
        return np.array(out), missed

    a, missed_before = answers(first)
    b, missed_after = answers(second)
    common: dict[str, Any] = {"rounds": rounds, "seed": seed}
    return {
        "images": len(shared),
        "before": {**metric_interval(labels, a, **common).as_dict(), "missed": missed_before},
        "after": {**metric_interval(labels, b, **common).as_dict(), "missed": missed_after},
        "difference": paired_difference(labels, b, a, **common).as_dict(),
        "accuracy": {"before": float((a == labels).mean()), "after": float((b == labels).mean())},
    }


def query_report(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}
