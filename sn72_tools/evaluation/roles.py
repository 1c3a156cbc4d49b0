"""Three roles for labelled data, kept apart by content hash: training, fitting, judging.

- **training** (and early stopping, which is training's own choice of checkpoint): what a model learnt from.
  A trained model folder records it in `sn72_data.json`, its base model's record merged in, so a model
  fine-tuned from a fine-tuned model still names every image any of them trained on;
- **fitting**: what a calibration was fitted on (the calibration file's `source.fit_sha256`);
- **judging**: the frozen set the promotion gate compares candidates on. It must share no image with any earlier
  role of either side it compares, or the comparison flatters whichever side saw it.

Images are named by the sha256 of their bytes, as the active-learning store and the eval cache name them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade.calibration import CalibrationFile
from cascade.config import CascadeConfig
from sn72_tools.evaluation.datasets import EvalError, open_source

LINEAGE_FILE = "sn72_data.json"
LINEAGE_FORMAT = 1
_OLD_SPLIT_FILE = "split.json"  # a run folder's record before lineage files (OUT/split.json beside OUT/model)


class RoleError(EvalError):
    """Data in two roles at once: the message names the roles, how many images and an example."""


@dataclass
class Lineage:
    """What a model learnt from: its own training and early-stopping images and those of its ancestors."""

    trained: set[str] = field(default_factory=set)
    early_stopping: set[str] = field(default_factory=set)
    known: bool = False  # False: a hub model or a folder with no record (nothing can be checked)
    records: list[str] = field(default_factory=list)  # where it was read from
    teacher_labelled: set[str] = field(default_factory=set)  # of `trained`: learnt from a teacher's label

    def merged(self, other: Lineage) -> Lineage:
        return Lineage(self.trained | other.trained, self.early_stopping | other.early_stopping,
                       self.known or other.known, self.records + other.records,
                       self.teacher_labelled | other.teacher_labelled)

    @property
    def seen(self) -> set[str]:
        return self.trained | self.early_stopping


def model_lineage(model: str | Path) -> Lineage:
    """The recorded lineage of a model folder (`sn72_data.json`, or an older run's `split.json` beside it)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return Lineage()
    record = path / LINEAGE_FILE
    if record.is_file():
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError) as exc:
            raise EvalError(f"{record}: cannot read the model's data record ({exc})") from exc
        return Lineage(set(data.get("trained", [])), set(data.get("early_stopping", [])), True, [str(record)],
                       set((data.get("teacher_labels") or {}).get("sha256", [])))
    old = path.parent / _OLD_SPLIT_FILE
    if old.is_file():  # runs made before the lineage file: the run's split beside its model folder
        try:
            data = json.loads(old.read_text())
        except (OSError, ValueError) as exc:
            raise EvalError(f"{old}: cannot read the run's split record ({exc})") from exc
        return Lineage(set(data.get("train", [])), set(data.get("heldout", [])), True, [str(old)])
    return Lineage()


def write_lineage(folder: Path, trained: Iterable[str], early_stopping: Iterable[str], base: Lineage,
                  base_model: str, teacher: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record in a model folder what it learnt from, its base model's lineage included.

    `teacher` (sn72_tools/training/teacher.py `teacher_record`): the teacher labels of this run, which are also
    among `trained`; "teacher_labels" keeps this run's count, weight and teachers, and every hash of it and its base.
    """
    data: dict[str, Any] = {
        "format": LINEAGE_FORMAT,
        "base_model": base_model,
        "base_lineage_known": base.known,
        "trained": sorted(set(trained) | base.trained),
        "early_stopping": sorted(set(early_stopping) | base.early_stopping),
    }
    if teacher is not None or base.teacher_labelled:
        this_run = teacher or {"count": 0, "weight": [], "by_teacher": {}, "sha256": []}
        data["teacher_labels"] = {**this_run, "sha256": sorted(set(this_run["sha256"]) | base.teacher_labelled)}
    (folder / LINEAGE_FILE).write_text(json.dumps(data, indent=0) + "\n")
    return data


def source_hashes(path: Path, kind: str = "auto", split: str | None = None, image_column: str = "image",
                  label_column: str = "label") -> dict[str, tuple[str, int]]:
    """sha256 -> (name, label) of every labelled image of a set (unreadable items are the reader's business)."""
    source = open_source(path, kind, split, image_column, label_column)
    hashes: dict[str, tuple[str, int]] = {}
    for item in source.items():
        try:
            data = item.read()
        except OSError:
            continue
        hashes.setdefault(hashlib.sha256(data).hexdigest(), (item.name, item.label))
    return hashes


def cascade_roles(cascade: CascadeConfig, side: str) -> tuple[dict[str, set[str]], list[str]]:
    """Every earlier role of a cascade's data: each local expert's lineage and its calibration's fit set.

    Returns the roles (description -> hashes) and notes on what could not be checked (hub models).
    """
    roles: dict[str, set[str]] = {}
    notes: list[str] = []
    for expert in cascade.experts():
        lineage = model_lineage(expert.model)
        if not lineage.known:
            notes.append(f"{side} expert {expert.name}: no record of its training images ({expert.model}); "
                         "a judge set it trained on cannot be detected")
            continue
        roles[f"training of the {side} expert {expert.name}"] = lineage.trained - lineage.teacher_labelled
        roles[f"teacher labels the {side} expert {expert.name} trained on"] = lineage.teacher_labelled
        roles[f"early stopping of the {side} expert {expert.name}"] = lineage.early_stopping
    fitted: CalibrationFile | None = cascade.fitted()
    if fitted is not None:
        roles[f"fitting of the {side} calibration"] = set(fitted.source.fit_sha256)
    return roles, notes


def check_disjoint(judged: dict[str, tuple[str, int]], roles: dict[str, set[str]], what: str = "the judge set") -> None:
    """Refuse a set that shares any image with an earlier role, naming each overlap with an example."""
    problems = []
    for role, hashes in roles.items():
        shared = sorted(set(judged) & hashes)
        if shared:
            problems.append(f"{len(shared)} images of {role} (e.g. {judged[shared[0]][0]})")
    if problems:
        raise RoleError(f"{what} shares {'; '.join(problems)}: a side judged on images it learnt from looks better "
                        "than it is. Judge on images no model and no calibration saw")
