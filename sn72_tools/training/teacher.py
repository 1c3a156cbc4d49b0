"""Teacher labels in a training run (`sn72-train ... --teacher-labels [STORE ...] --teacher-weight 0.5`).

Teacher labels (`sn72-al teach`, sn72_tools/al/teacher.py) are a model's confident answers on unlabelled records
of an active-learning store. A run takes them:
- in the **train** role only, added after the human images were split, so they never choose a checkpoint (dev),
  never fit a calibration (fit) and, through the model's lineage, can never enter a judge set (the promotion
  gate's roles check names them);
- never over a person: an image that any human-labelled set of the run holds (train, dev, fit) keeps the human
  label and drops the teacher's; an image `--exclude` names is dropped as well;
- with a **per-sample loss weight** (`--teacher-weight`, default 0.5; 1 = as much as a human label): each image's
  loss (the recipe's, sn72_tools/training/losses.py) is multiplied by its weight before the step's sum is divided
  by the step's images, so a teacher label at 0.5 pulls half as hard as a person's. A weight rather than sampling:
  every teacher label is seen every epoch and the epoch's length stays the data's.
The model folder's lineage (`sn72_data.json`, "teacher_labels") records how many it used, from which teacher and
at which weight, and their content hashes (which also stay among the trained ones, so every older check holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cascade.config import DecodeConfig
from cascade.decode import DecodeError, decode_image
from sn72_tools.training.data import Example, SourceCount, Split
from sn72_tools.training.losses import SAMPLE_WEIGHT
from sn72_tools.training.model import PixelSet
from sn72_tools.training.recipe import TrainError

DEFAULT_WEIGHT = 0.5


def check_weight(weight: float) -> float:
    if not 0.0 < weight <= 1.0:
        raise TrainError(f"--teacher-weight must lie in (0, 1] (a teacher label never outweighs a person's), "
                         f"got {weight}")
    return weight


def stores_among(paths: Sequence[Path]) -> list[Path]:
    """The active-learning stores among DATA (what a bare `--teacher-labels` reads)."""
    from sn72_tools.evaluation.datasets import EvalError, detect_kind

    found = []
    for path in paths:
        try:
            if path.exists() and detect_kind(path) == "al":
                found.append(path)
        except EvalError:
            continue
    return found


def read_teacher_examples(stores: Sequence[Path], weight: float, *, min_side: int | None = None,
                          progress: bool = True) -> tuple[list[Example], list[SourceCount]]:
    """Every readable teacher label of `stores` (records with no human label), as weighted examples."""
    from cascade.observers.al_store import ALStore, StoreError
    from sn72_tools.al.teacher import teacher_labels

    check_weight(weight)
    limits = DecodeConfig()
    examples: list[Example] = []
    counts: list[SourceCount] = []
    seen: set[str] = set()
    for store_path in stores:
        try:
            with ALStore(store_path, writer=False) as store:
                labels = teacher_labels(store)
        except StoreError as exc:
            raise TrainError(f"--teacher-labels: {exc}") from exc
        count = SourceCount(f"teacher labels of {store_path}")
        counts.append(count)
        if not labels:
            count.notes.append("no teacher labels here (sn72-al teach --cascade C writes them)")
        for label in tqdm(labels, desc=f"reading teacher labels of {store_path.name}", unit="img",
                          disable=not progress, dynamic_ncols=True):
            count.labelled += 1
            try:
                data = label.path.read_bytes()
                decode_image(data, limits, min_side)
            except (OSError, DecodeError) as exc:  # evicted since, or refused: counted, not fatal
                count.unreadable += 1
                count.first_unreadable = count.first_unreadable or f"record {label.record_id}: {exc}"
                continue
            if label.image_hash in seen:
                count.duplicates += 1
                continue
            seen.add(label.image_hash)
            examples.append(Example(label.image_hash, label.label, f"al record {label.record_id}", count.source,
                                    label.path.read_bytes, weight=weight, teacher=label.source))
    return examples, counts


def add_teacher_examples(split: Split, examples: Sequence[Example], counts: Sequence[SourceCount],
                         exclude: frozenset[str] = frozenset()) -> Split:
    """`split` with the teacher examples added to its training images: never over an image any human-labelled
    role holds (that label wins; the teacher's is counted as a conflict or a duplicate), never an excluded one."""
    human = {e.sha256: e.label for part in (split.train, split.dev, split.fit) for e in part}
    by_source = {c.source: c for c in counts}
    added = []
    for example in examples:
        count = by_source[example.source]
        if example.sha256 in exclude:
            count.excluded += 1
        elif example.sha256 in human:
            if human[example.sha256] == example.label:
                count.duplicates += 1
            else:
                count.conflicting += 1
        else:
            added.append(example)
            count.train[example.label] += 1
    for count in counts:
        if count.conflicting:
            count.notes.append(f"{count.conflicting} teacher labels disagreed with a person's label of the same "
                               "image: the person's was kept")
    return Split(split.train + added, split.dev, split.fit, split.counts + list(counts), split.dev_from,
                 split.fit_from)


def teacher_record(train: Sequence[Example]) -> dict[str, Any] | None:
    """What the lineage and the run record say about the teacher labels trained on (None: there were none)."""
    taught = [e for e in train if e.teacher is not None]
    if not taught:
        return None
    by_teacher: dict[str, dict[str, int]] = {}
    for example in taught:
        assert example.teacher is not None
        per = by_teacher.setdefault(example.teacher, {"0": 0, "1": 0})
        per[str(example.label)] += 1
    return {"count": len(taught), "weight": sorted({e.weight for e in taught}), "by_teacher": by_teacher,
            "sha256": sorted(e.sha256 for e in taught)}


def weighted(examples: Sequence[Example]) -> bool:
    return any(e.weight != 1.0 for e in examples)


class WeightedPixelSet(PixelSet):
    """A PixelSet whose items carry their example's loss weight, which `RecipeTrainer` multiplies each image's loss
    by (sn72_tools/training/losses.py); a set without it (the dev set) weighs every image 1."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item[SAMPLE_WEIGHT] = float(self.examples[index].weight)
        return item
