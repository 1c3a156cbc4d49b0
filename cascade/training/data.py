"""The labelled images a run trains and judges on: read through the eval tool's readers, checked, split.

Every image is read once up front: its bytes are hashed (sha256, the same content hash the active-learning
store and the eval cache use) and decoded with the miner's own decoder, so an unreadable image is counted
and named here rather than failing an epoch later. The same bytes seen twice are one image; the same bytes
with both labels are left out. The held-out set is either the operator's (`--heldout`) or a stratified,
seeded share of the data; either way the replay guard refuses a held-out image that is also a training image.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger
from tqdm import tqdm

from cascade.config import DecodeConfig
from cascade.decode import DecodeError, decode_image
from cascade.evaluation.datasets import EvalError, open_source
from cascade.observers.al_store import image_extension
from cascade.training.recipe import TrainError

SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class Example:
    """One labelled image: its content hash, where it came from, and how to read its bytes again."""

    sha256: str
    label: int
    name: str
    source: str
    read: Callable[[], bytes]


@dataclass
class SourceCount:
    """What one source gave: labelled images read, and what became of them."""

    source: str
    labelled: int = 0
    unreadable: int = 0
    duplicates: int = 0  # the same bytes as an image read before (kept once)
    conflicting: int = 0  # the same bytes carry the other label somewhere: left out
    train: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    heldout: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    notes: list[str] = field(default_factory=list)
    first_unreadable: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "labelled": self.labelled, "unreadable": self.unreadable,
                "duplicates": self.duplicates, "conflicting": self.conflicting,
                "train": {str(k): v for k, v in self.train.items()},
                "heldout": {str(k): v for k, v in self.heldout.items()}, "notes": self.notes}


@dataclass
class Split:
    train: list[Example]
    heldout: list[Example]
    counts: list[SourceCount]
    heldout_from: str  # how the held-out set was chosen, for the report and the model card

    def table(self) -> list[str]:
        """One line per source: what it gave and where its images went."""
        lines = [f"{'source':<48} {'labelled':>8} {'unread':>6} {'dup':>5} {'confl':>5} "
                 f"{'train 0/1':>11} {'held 0/1':>11}"]
        for c in self.counts:
            lines.append(f"{c.source[-48:]:<48} {c.labelled:>8} {c.unreadable:>6} {c.duplicates:>5} "
                         f"{c.conflicting:>5} {c.train[0]:>5}/{c.train[1]:<5} {c.heldout[0]:>5}/{c.heldout[1]:<5}")
            if c.first_unreadable:
                lines.append(f"  first unreadable: {c.first_unreadable}")
            lines += [f"  note: {note}" for note in c.notes]
        return lines


def read_sources(paths: Sequence[Path], *, kind: str = "auto", split: str | None = None, image_column: str = "image",
                 label_column: str = "label", min_side: int | None = None,
                 progress: bool = True) -> tuple[list[Example], list[SourceCount]]:
    """Every readable labelled image of `paths`, once per content hash, with per-source counts."""
    limits = DecodeConfig()
    sightings: dict[str, list[tuple[SourceCount, Example]]] = {}  # insertion order: the order images were read
    counts: list[SourceCount] = []
    for path in paths:
        try:
            source = open_source(path, kind, split, image_column, label_column)
        except EvalError as exc:
            raise TrainError(str(exc)) from exc
        count = SourceCount(source.describe(), notes=list(source.notes))
        counts.append(count)
        for item in tqdm(source.items(), total=source.size, desc=f"reading {path.name}", unit="img",
                         disable=not progress, dynamic_ncols=True):
            count.labelled += 1
            try:
                data = item.read()
                decode_image(data, limits, min_side)
            except (OSError, DecodeError) as exc:
                count.unreadable += 1
                count.first_unreadable = count.first_unreadable or f"{item.name}: {exc}"
                continue
            sha = hashlib.sha256(data).hexdigest()
            sightings.setdefault(sha, []).append((count, Example(sha, item.label, item.name, count.source, item.read)))
    examples = []
    for seen in sightings.values():
        if len({example.label for _, example in seen}) > 1:  # both labels on the same bytes: neither is trusted
            for count, _ in seen:
                count.conflicting += 1
            continue
        examples.append(seen[0][1])
        for count, _ in seen[1:]:
            count.duplicates += 1
    return examples, counts


def _check_classes(examples: Sequence[Example], what: str) -> None:
    if not examples:
        raise TrainError(f"{what}: no readable labelled image")
    labels = {e.label for e in examples}
    if len(labels) < 2:
        only = labels.pop()
        raise TrainError(f"{what} holds only class {only} ({len(examples)} images): training and MCC need both "
                         "classes (0: no roadwork, 1: roadwork)")


def replay_guard(train: Sequence[Example], heldout: Sequence[Example], what: str = "the held-out set") -> None:
    """Refuse a held-out set that shares any image (content hash) with the training images."""
    train_names = {e.sha256: e for e in train}
    shared = [e for e in heldout if e.sha256 in train_names]
    if shared:
        first = shared[0]
        other = train_names[first.sha256]
        raise TrainError(
            f"{what} shares {len(shared)} of its {len(heldout)} images with the training images (same content "
            f"hash), e.g. {first.source}:{first.name} = {other.source}:{other.name}; a model judged on images it "
            "was trained on looks better than it is: remove them from one side"
        )


def split_examples(examples: list[Example], counts: list[SourceCount], heldout: list[Example] | None,
                   heldout_counts: list[SourceCount] | None, holdout: float, seed: int) -> Split:
    """Training and held-out images: the operator's held-out set (guarded), or a stratified seeded share."""
    _check_classes(examples, "the training data")
    if heldout is not None:
        _check_classes(heldout, "the held-out set")
        replay_guard(examples, heldout)
        train, held = examples, heldout
        described = f"held-out set {', '.join(c.source for c in heldout_counts or [])} ({len(held)} images)"
        all_counts = counts + (heldout_counts or [])
    else:
        from sklearn.model_selection import train_test_split

        labels = np.array([e.label for e in examples])
        try:
            train_rows, held_rows = train_test_split(np.arange(labels.size), test_size=holdout, stratify=labels,
                                                     random_state=seed)
        except ValueError as exc:
            per_class = {c: int((labels == c).sum()) for c in (0, 1)}
            raise TrainError(f"cannot hold {holdout:.0%} of {labels.size} images out with both classes on each side "
                             f"(per class: {per_class}): give more images or a held-out set ({exc})") from exc
        train = [examples[i] for i in sorted(train_rows)]
        held = [examples[i] for i in sorted(held_rows)]
        described = f"{holdout:.0%} of the data held out ({len(held)} images, stratified, seed {seed})"
        all_counts = counts
    by_source = {c.source: c for c in all_counts}
    for part, bucket in ((train, "train"), (held, "heldout")):
        for example in part:
            getattr(by_source[example.source], bucket)[example.label] += 1
    return Split(train, held, all_counts, described)


def write_heldout(folder: Path, heldout: Sequence[Example]) -> dict[str, str]:
    """The held-out images as a `0/` + `1/` folder (the eval tool reads it); returns sha256 -> file name."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    names = {}
    for example in heldout:
        data = example.read()
        name = f"{example.label}/{example.sha256}.{image_extension(data)}"
        (tmp / str(example.label)).mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
        names[example.sha256] = name
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return names


def write_split(path: Path, split: Split) -> None:
    """Which images trained and which were held out (content hashes): checked on --resume and --refit."""
    path.write_text(json.dumps({"train": sorted(e.sha256 for e in split.train),
                                "heldout": sorted(e.sha256 for e in split.heldout),
                                "heldout_from": split.heldout_from}, indent=1) + "\n")


def read_split(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainError(f"{path}: cannot read the record of the training split ({exc})") from exc
    return {"train": list(data["train"]), "heldout": list(data["heldout"])}


def check_resumed_split(path: Path, split: Split) -> None:
    """A resumed run must see the images its checkpoint was trained on."""
    recorded = read_split(path)
    now = {"train": sorted(e.sha256 for e in split.train), "heldout": sorted(e.sha256 for e in split.heldout)}
    for part in ("train", "heldout"):
        if recorded[part] != now[part]:
            added = len(set(now[part]) - set(recorded[part]))
            gone = len(set(recorded[part]) - set(now[part]))
            raise TrainError(f"--resume: the {part} images differ from the checkpoint's ({added} new, {gone} gone; "
                             f"{path}): resume with the same data and --seed, or start over with --overwrite")
    logger.info("resuming on the same {} training and {} held-out images", len(split.train), len(split.heldout))
