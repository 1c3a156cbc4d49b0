"""The labelled images a run uses, in three roles: read through the eval tool's readers, checked, split.

Every image is read once up front: its bytes are hashed (sha256, the same content hash the active-learning
store and the eval cache use) and decoded with the miner's own decoder, so an unreadable image is counted
and named here rather than failing an epoch later. The same bytes seen twice are one image; the same bytes
with both labels are left out. Each image then has exactly one role (sn72_tools/evaluation/roles.py):
- **train**: what the model learns from;
- **dev** (early stopping): what picks the checkpoint, so its figures flatter the kept model;
- **fit**: what the calibration of the new model is fitted on (`--refit`): neither trained nor early-stopped on.
Dev and fit are the operator's sets (`--dev`, `--fit-data`) or stratified, seeded shares of the data drawn only
from images the starting model never trained on (its recorded lineage): a "before" figure on images the base
model learnt is inflated. The replay guard refuses any image in two roles. `--exclude` takes images out of every
role (a frozen judge set, say).
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
from cascade.observers.al_store import image_extension
from sn72_tools.evaluation.datasets import EvalError, open_source
from sn72_tools.training.recipe import TrainError

SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class Example:
    """One labelled image: its content hash, where it came from, and how to read its bytes again."""

    sha256: str
    label: int
    name: str
    source: str
    read: Callable[[], bytes]
    weight: float = 1.0  # its share of the loss: below 1 for a teacher label (sn72_tools/training/teacher.py)
    teacher: str | None = None  # `teacher:<level>@<hash>` when a model gave the label, not a person


@dataclass
class SourceCount:
    """What one source gave: labelled images read, and what became of them."""

    source: str
    labelled: int = 0
    unreadable: int = 0
    duplicates: int = 0  # the same bytes as an image read before (kept once)
    conflicting: int = 0  # the same bytes carry the other label somewhere: left out
    excluded: int = 0  # named by --exclude: in no role
    train: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    dev: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    fit: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    notes: list[str] = field(default_factory=list)
    first_unreadable: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "labelled": self.labelled, "unreadable": self.unreadable,
                "duplicates": self.duplicates, "conflicting": self.conflicting, "excluded": self.excluded,
                **{part: {str(k): v for k, v in getattr(self, part).items()} for part in ROLES},
                "notes": self.notes}


ROLES = ("train", "dev", "fit")


@dataclass
class Split:
    train: list[Example]
    dev: list[Example]  # early stopping and the checkpoint choice
    fit: list[Example]  # the new model's calibration (empty when --fit-share is 0 and no --fit-data)
    counts: list[SourceCount]
    dev_from: str  # how each set was chosen, for the report and the model card
    fit_from: str

    def table(self) -> list[str]:
        """One line per source: what it gave and where its images went."""
        lines = [f"{'source':<44} {'labelled':>8} {'unread':>6} {'dup':>5} {'confl':>5} {'excl':>5} "
                 f"{'train 0/1':>11} {'dev 0/1':>9} {'fit 0/1':>9}"]
        for c in self.counts:
            lines.append(f"{c.source[-44:]:<44} {c.labelled:>8} {c.unreadable:>6} {c.duplicates:>5} "
                         f"{c.conflicting:>5} {c.excluded:>5} {c.train[0]:>5}/{c.train[1]:<5} "
                         f"{c.dev[0]:>4}/{c.dev[1]:<4} {c.fit[0]:>4}/{c.fit[1]:<4}")
            if c.first_unreadable:
                lines.append(f"  first unreadable: {c.first_unreadable}")
            lines += [f"  note: {note}" for note in c.notes]
        lines += [f"early stopping (dev): {self.dev_from}", f"calibration fit: {self.fit_from}"]
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


def replay_guard(train: Sequence[Example], heldout: Sequence[Example], what: str = "the held-out set",
                 other: str = "the training images") -> None:
    """Refuse a set that shares any image (content hash) with another role's images."""
    train_names = {e.sha256: e for e in train}
    shared = [e for e in heldout if e.sha256 in train_names]
    if shared:
        first = shared[0]
        seen = train_names[first.sha256]
        raise TrainError(
            f"{what} shares {len(shared)} of its {len(heldout)} images with {other} (same content "
            f"hash), e.g. {first.source}:{first.name} = {seen.source}:{seen.name}; a model judged on images it "
            "was trained on looks better than it is: remove them from one side"
        )


def _lineage_guard(part: Sequence[Example], base_seen: frozenset[str], what: str) -> None:
    shared = [e for e in part if e.sha256 in base_seen]
    if shared:
        raise TrainError(f"{what} shares {len(shared)} of its {len(part)} images with the starting model's own "
                         f"training images (its recorded lineage), e.g. {shared[0].source}:{shared[0].name}: its "
                         "'before' would be inflated; give images the starting model never saw")


def _stratified_take(examples: list[Example], size: int, seed: int, what: str) -> tuple[list[Example], list[Example]]:
    """(rest, taken): `size` images drawn stratified by label, seeded."""
    from sklearn.model_selection import train_test_split

    labels = np.array([e.label for e in examples])
    if size == labels.size:
        return [], list(examples)
    try:
        rest, taken = train_test_split(np.arange(labels.size), test_size=size, stratify=labels, random_state=seed)
    except ValueError as exc:
        per_class = {c: int((labels == c).sum()) for c in (0, 1)}
        raise TrainError(f"cannot take {size} of {labels.size} images for {what} with both classes on each side "
                         f"(per class: {per_class}): give more images or the set itself ({exc})") from exc
    return [examples[i] for i in sorted(rest)], [examples[i] for i in sorted(taken)]


def _without(examples: list[Example], exclude: frozenset[str], counts: list[SourceCount]) -> list[Example]:
    by_source = {c.source: c for c in counts}
    kept = []
    for example in examples:
        if example.sha256 in exclude:
            by_source[example.source].excluded += 1
        else:
            kept.append(example)
    return kept


def split_examples(examples: list[Example], counts: list[SourceCount], *, dev: list[Example] | None = None,
                   dev_counts: list[SourceCount] | None = None, fit: list[Example] | None = None,
                   fit_counts: list[SourceCount] | None = None, dev_share: float = 0.2, fit_share: float = 0.2,
                   seed: int = 0, base_seen: frozenset[str] = frozenset(),
                   exclude: frozenset[str] = frozenset()) -> Split:
    """Training, early-stopping and fit images: the operator's sets (guarded) or stratified seeded shares."""
    all_counts = counts + (dev_counts or []) + (fit_counts or [])
    examples = _without(examples, exclude, all_counts)
    _check_classes(examples, "the training data")
    if dev is not None:
        dev = _without(dev, exclude, all_counts)
        _check_classes(dev, "the early-stopping set")
        replay_guard(examples, dev, "the early-stopping set (--dev)")
        _lineage_guard(dev, base_seen, "the early-stopping set (--dev)")
    if fit is not None:
        fit = _without(fit, exclude, all_counts)
        _check_classes(fit, "the fit set")
        replay_guard(examples, fit, "the fit set (--fit-data)")
        replay_guard(dev or [], fit, "the fit set (--fit-data)", "the early-stopping set")
        _lineage_guard(fit, base_seen, "the fit set (--fit-data)")
    # Shares of the images new to the starting model: those it trained on can only train again.
    eligible = [e for e in examples if e.sha256 not in base_seen]
    train = [e for e in examples if e.sha256 in base_seen]
    n, new = len(examples), len(eligible)
    dev_size = 0 if dev is not None else max(2, round(dev_share * new))
    fit_size = 0 if fit is not None or fit_share == 0.0 else max(2, round(fit_share * new))
    if new < dev_size + fit_size + (0 if train else 2):
        which = f"{new} of the {n} images are new to the starting model" if base_seen else f"{n} images"
        raise TrainError(f"{which}: too few to hold {dev_size} out for early stopping and {fit_size} for the "
                         "calibration fit and train on the rest; give --dev and --fit-data sets, or more images")
    rest, dev_from, fit_from = eligible, "", ""
    if dev_size or fit_size:
        rest, held = _stratified_take(eligible, dev_size + fit_size, seed, "early stopping and fitting")
        if dev_size and fit_size:
            drawn_dev, drawn_fit = _stratified_take(held, fit_size, seed + 1, "the calibration fit")
        else:
            drawn_dev, drawn_fit = (held, []) if dev_size else ([], held)
        dev = drawn_dev if dev is None else dev
        fit = drawn_fit if fit is None else fit
    of_what = f"of the {new} images new to the starting model ({len(train)} it trained on stayed in training)" \
        if base_seen else "of the data"
    dev_from = (f"the set {', '.join(c.source for c in dev_counts or [])} ({len(dev or [])} images)"
                if dev_counts else f"{dev_share:.0%} {of_what}: {len(dev or [])} images, stratified, seed {seed}")
    fit_from = (f"the set {', '.join(c.source for c in fit_counts or [])} ({len(fit or [])} images)"
                if fit_counts else (f"{fit_share:.0%} {of_what}: {len(fit or [])} images, stratified, seed {seed}"
                                    if fit else "none (--fit-share 0): --refit needs --fit-data"))
    train = train + rest
    by_source = {c.source: c for c in all_counts}
    for part, bucket in ((train, "train"), (dev or [], "dev"), (fit or [], "fit")):
        for example in part:
            getattr(by_source[example.source], bucket)[example.label] += 1
    return Split(train, dev or [], fit or [], all_counts, dev_from, fit_from)


def write_heldout(folder: Path, heldout: Sequence[Example]) -> dict[str, str]:
    """Images of one role as a `0/` + `1/` folder (the eval tool reads it); returns sha256 -> file name."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)  # a role with no image is an empty folder, not a missing one
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
    """Which images had which role (content hashes): checked on --resume and --refit."""
    path.write_text(json.dumps({"train": sorted(e.sha256 for e in split.train),
                                "dev": sorted(e.sha256 for e in split.dev),
                                "fit": sorted(e.sha256 for e in split.fit),
                                "dev_from": split.dev_from, "fit_from": split.fit_from}, indent=1) + "\n")


def read_split(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainError(f"{path}: cannot read the record of the training split ({exc})") from exc
    # runs before three roles called the early-stopping set "heldout" and had no fit set
    return {"train": list(data["train"]), "dev": list(data.get("dev", data.get("heldout", []))),
            "fit": list(data.get("fit", []))}


def check_resumed_split(path: Path, split: Split) -> None:
    """A resumed run must see the images its checkpoint was trained on."""
    recorded = read_split(path)
    now = {part: sorted(e.sha256 for e in getattr(split, part)) for part in ROLES}
    for part in ROLES:
        if recorded[part] != now[part]:
            added = len(set(now[part]) - set(recorded[part]))
            gone = len(set(recorded[part]) - set(now[part]))
            raise TrainError(f"--resume: the {part} images differ from the checkpoint's ({added} new, {gone} gone; "
                             f"{path}): resume with the same data and --seed, or start over with --overwrite")
    logger.info("resuming on the same {} training, {} early-stopping and {} fit images", len(split.train),
                len(split.dev), len(split.fit))
