"""Putting a promoted candidate in service: the served cascade file edited in place, the old one kept.

A candidate is a cascade YAML (written by `sn72-eval --fit` or `sn72-train --refit`) that differs from the
served one in its experts' `model` lines and its calibration only. Promotion
- writes the candidate's calibration beside the served cascade under a name that carries its content hash
  (`calibrations/<stem>.<hash>.json`: never over a file another run or an earlier promotion owns),
- points the served cascade's `calibration:` and changed `model:` lines at the new files,
- bumps its `release` (only when something served changed),
- keeps the served file as it was in the promotion's history folder, to roll back by hand.
The YAML is edited with ruamel.yaml's round trip, so comments, order and quoting stay as the operator wrote them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from cascade.calibration import digest
from cascade.config import CascadeConfig, load_cascade
from cascade.release import next_release
from sn72_tools.evaluation.datasets import EvalError
from sn72_tools.promotion.served import mark_served

_IGNORED_TOP = {"version", "release", "calibration"}


def _plain(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise EvalError(f"{path}: a cascade file holds a mapping at the top")
    return data


def _shape(data: dict[str, Any], drop_fitted: bool) -> dict[str, Any]:
    """The parts of a cascade a promotion may not change (models and calibration left out)."""
    levels = []
    for level in data.get("levels", []):
        experts = []
        for expert in level.get("experts", []):
            kept = {k: v for k, v in expert.items() if k != "model" and not (drop_fitted and k in ("calibration",
                                                                                                   "weight"))}
            experts.append(kept)
        kept_level = {k: v for k, v in level.items() if k != "experts" and not (drop_fitted and k == "exit_margin")}
        levels.append({**kept_level, "experts": experts})
    return {**{k: v for k, v in data.items() if k not in _IGNORED_TOP and k != "levels"}, "levels": levels}


def changes(served_path: Path, served: CascadeConfig, candidate_path: Path,
            candidate: CascadeConfig) -> dict[str, Any]:
    """What promoting would change: {"models": {expert: model}, "calibration": text | None}; refuses more."""
    fitted = candidate.fitted() is not None and served.fitted() is not None
    if _shape(_plain(served_path), fitted) != _shape(_plain(candidate_path), fitted):
        raise EvalError(f"{candidate_path} changes more than experts' models and the calibration (levels, experts, "
                        f"options or answers differ from {served_path}): edit the served cascade by hand")
    served_models = {e.name: e.model for e in served.experts()}
    models = {e.name: e.model for e in candidate.experts() if e.model != served_models.get(e.name)}
    text = candidate.calibration.read_text() if candidate.calibration is not None else None
    current = served.calibration.read_text() if served.calibration is not None else None
    return {"models": models, "calibration": text, "calibration_changed": text != current}


def _relative(target: str, folder: Path) -> str:
    """A local path as the cascade loader reads it (./ or ../ relative to the YAML's folder); hub ids as they are."""
    path = Path(target)
    if not path.is_absolute() or not path.exists():
        return target
    relative = os.path.relpath(path, folder)
    return relative if relative.startswith("../") else f"./{relative}"


def install(served_path: Path, plan: dict[str, Any], history: Path) -> dict[str, str]:
    """Edit the served cascade as `plan` says, keeping the old file in `history`; returns what was written."""
    served_path = served_path.resolve()
    folder = served_path.parent
    history.mkdir(parents=True, exist_ok=True)
    shutil.copy2(served_path, history / "served-before.yaml")
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096
    yaml_rt.indent(mapping=2, sequence=4, offset=2)  # "  - name:" as the project's YAMLs are written
    data = yaml_rt.load(served_path.read_text())
    written: dict[str, str] = {}
    for level in data["levels"]:
        for expert in level["experts"]:
            if expert["name"] in plan["models"]:
                expert["model"] = _relative(plan["models"][expert["name"]], folder)
                written[f"model of {expert['name']}"] = str(expert["model"])
                mark_served(Path(plan["models"][expert["name"]]), served_path)
    text = plan["calibration"]
    if text is None:
        if "calibration" in data:
            del data["calibration"]
            written["calibration"] = "(none)"
    elif plan["calibration_changed"] or "calibration" not in data:
        target = folder / "calibrations" / f"{served_path.stem}.{digest(text.encode())}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_text(text)
        data["calibration"] = os.path.relpath(target, folder)
        written["calibration"] = str(target)
    data["release"] = next_release(str(data.get("release", "0.1.0")))
    written["release"] = str(data["release"])
    buffer = io.StringIO()
    yaml_rt.dump(data, buffer)
    tmp = served_path.with_suffix(served_path.suffix + ".tmp")
    tmp.write_text(buffer.getvalue())
    try:
        load_cascade(tmp)  # the edited file must load, calibration and weights checked, before it is served
    except (ValueError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise EvalError(f"the promoted cascade would not load ({exc}); nothing changed") from exc
    tmp.replace(served_path)
    (history / "installed.json").write_text(json.dumps(written, indent=2) + "\n")
    return written
