"""The judge set, frozen, and every look at it recorded: a gate that can be asked until it says yes is no gate.

- The first comparison (a dry run too: a look is a look) records the judge set's hashes in `judge.json`; later
  comparisons must judge on the same set. A different set is refused unless the operator starts a new one on
  purpose (`--new-judge`; the old record is kept beside it).
- Every comparison is appended to `verdicts.jsonl` (the candidate's fingerprint, the judge set's, the decision).
  A new judge set cannot rescue a candidate already judged on another: it is refused.
- A judge set smaller than `min_images` (a quarter of that per class) is refused: on ten images an interval is
  wide enough to let chance through.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cascade.config import CascadeConfig
from cascade.model_identity import content_identity
from sn72_tools.evaluation.datasets import EvalError

MANIFEST = "judge.json"
VERDICTS = "verdicts.jsonl"
MIN_JUDGE_IMAGES = 200


def fingerprint(hashes: list[str] | set[str]) -> str:
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:16]


def candidate_fingerprint(cascade: CascadeConfig) -> str:
    """What the candidate serves: its version (the calibration's hash in it) and each expert's weights by content."""
    parts = [cascade.version, *sorted(f"{e.name}={content_identity(e.model)}" for e in cascade.experts())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def check_size(judged: dict[str, tuple[str, int]], min_images: int) -> None:
    per_class = max(10, min_images // 4)
    counts = [sum(1 for _, label in judged.values() if label == c) for c in (0, 1)]
    if len(judged) < min_images or min(counts) < per_class:
        raise EvalError(f"the judge set has {len(judged)} images ({counts[0]} of class 0, {counts[1]} of class 1); "
                        f"the gate needs at least {min_images} ({per_class} of each class): on fewer, chance passes "
                        "too often (--min-judge-images lowers it, knowingly)")


def check_frozen(history: Path, judged: dict[str, tuple[str, int]], described: str, new_judge: bool) -> str:
    """Record the judge set on first use, or check it is the recorded one; the line to report."""
    manifest = history / MANIFEST
    hashes = sorted(judged)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise EvalError(f"{manifest}: cannot read the frozen judge set ({exc})") from exc
        if recorded.get("sha256") == hashes:
            recorded["uses"] = int(recorded.get("uses", 0)) + 1
            manifest.write_text(json.dumps(recorded, indent=0) + "\n")
            return f"judge set: the frozen one ({len(hashes)} images, first recorded {recorded.get('created')}, " \
                   f"looked at {recorded['uses']} times: each look spends a little of its independence)"
        if not new_judge:
            common = len(set(hashes) & set(recorded.get("sha256", [])))
            raise EvalError(
                f"the judge set differs from the frozen one in {manifest} ({len(recorded.get('sha256', []))} images, "
                f"{recorded.get('source')}); given {len(hashes)} images of {described}, {common} in common. A judge "
                "set changed until a candidate passes is no judge: keep it, or start a new one with --new-judge")
        manifest.rename(history / f"judge.{now.replace(':', '')}.json")
    history.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"source": described, "created": now, "uses": 1, "sha256": hashes},
                                   indent=0) + "\n")
    return f"judge set: {len(hashes)} images of {described}, frozen now in {manifest}"


def earlier_verdicts(history: Path, candidate: str) -> list[dict[str, Any]]:
    path = history / VERDICTS
    if not path.is_file():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("candidate") == candidate:
            found.append(entry)
    return found


def check_not_rescued(history: Path, candidate: str, judge: str) -> None:
    """A candidate judged before on another judge set cannot be judged again on a new one."""
    other = [v for v in earlier_verdicts(history, candidate) if v.get("judge") != judge]
    if other:
        last = other[-1]
        raise EvalError(f"this candidate was judged on another judge set before ({last.get('time')}: "
                        f"{last.get('decision')}); a new judge set cannot rescue it. Make a new candidate (more data, "
                        "another recipe) and judge it on the frozen set")


def log_verdict(history: Path, candidate: str, judge: str, promote: bool, reason: str, dry_run: bool) -> None:
    history.mkdir(parents=True, exist_ok=True)
    entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "candidate": candidate, "judge": judge,
             "promote": promote, "decision": reason, "dry_run": dry_run}
    with (history / VERDICTS).open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
