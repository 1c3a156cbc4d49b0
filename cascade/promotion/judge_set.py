"""The judge set, frozen: the first promotion records its images' hashes; later ones must judge on the same.

A judge set swapped until some candidate passes is no judge at all. `judge.json` in the promotion history
holds the hashes of the set the gate has judged on; a different set is refused unless the operator starts a new
one on purpose (`--new-judge`), which keeps the old record beside it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cascade.evaluation.datasets import EvalError

MANIFEST = "judge.json"


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
                   f"used {recorded['uses']} times)"
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
