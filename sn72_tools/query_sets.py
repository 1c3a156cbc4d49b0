"""What sn72-query sends and how it scores the answers: labelled sets read by the eval tool's readers, plain images
without labels, and the report's label arithmetic (misses shown, not hidden).

Images are read when they are sent, never all held at once.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sn72_tools.evaluation.bootstrap import metric_interval
from sn72_tools.evaluation.datasets import FOLDER_LAYOUTS, EvalError, detect_kind, open_source, parse_label
from sn72_tools.evaluation.scoring import accuracy, mcc

PLAIN_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}  # what an unlabelled folder is searched for
_FOLDER_LABELS = {name: label for layout in FOLDER_LAYOUTS for label, name in enumerate(layout)}


@dataclass(frozen=True)
class QueryImage:
    name: str
    label: int  # 0/1, or -1: unknown
    read: Callable[[], bytes]


def read_name_labels(path: Path) -> dict[str, int]:
    """`--labels`: rows `file name,label` for plain images given by path; a header row is skipped, labels as the
    eval tool reads them (0/1, none/roadwork, no/yes)."""
    labels: dict[str, int] = {}
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.reader(handle), 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if line == 1 and len(row) >= 2 and row[1].strip().lower() == "label":
                continue
            if len(row) < 2:
                raise SystemExit(f"{path}:{line}: expected 'file,label', got {row}")
            try:
                labels[Path(row[0].strip()).name] = parse_label(row[1], f"{path}:{line}")
            except EvalError as exc:
                raise SystemExit(str(exc)) from None
    return labels


def _plain(file: Path, labels: dict[str, int]) -> QueryImage:
    """An image given without a set: its label from `--labels`, or from a 0/1 or none/roadwork parent folder."""
    parent = _FOLDER_LABELS.get(file.parent.name.lower(), -1)
    return QueryImage(str(file), labels.get(file.name, parent), file.read_bytes)


def collect(paths: Sequence[Path], labels_csv: Path | None) -> tuple[list[QueryImage], list[str]]:
    """Every image the paths name, and notes for the operator.

    A labelled set (0/ + 1/ or none/ + roadwork/ folders, a CSV with a `path,label` header, parquet, a `datasets`
    folder, an active-learning store) is read by `sn72_tools.evaluation.datasets.open_source`, as `sn72-eval` reads it;
    an image file, or a folder of images without that layout, is sent unlabelled (or labelled by `--labels`).
    """
    names = read_name_labels(labels_csv) if labels_csv is not None else {}
    images: list[QueryImage] = []
    notes: list[str] = []
    for path in paths:
        if not path.exists():
            raise SystemExit(f"no such image, folder or labelled set: {path}")
        if path.is_file() and path.suffix.lower() in PLAIN_SUFFIXES:
            images.append(_plain(path, names))
            continue
        try:
            plain_folder = path.is_dir() and detect_kind(path) == "folder"
            source = open_source(path)
        except EvalError as exc:
            if not plain_folder:
                raise SystemExit(f"cannot read {path}: {exc}") from None
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PLAIN_SUFFIXES)
            images += [_plain(file, names) for file in files]
            continue
        notes += [f"{source.describe()}: {note}" for note in source.notes]
        images += [QueryImage(f"{path}:{item.name}", item.label, item.read) for item in source.items()]
    return images, notes


def label_scores(pairs: Sequence[tuple[int, float | None]]) -> dict[str, object]:
    """(label, prediction or None for a miss) of every labelled request -> counts, and MCC and accuracy twice:
    over the answered requests only, and with each miss counted as a wrong answer (a missed challenge scores 0
    and takes a slot of the validators' window; the answered-only figure alone would hide it)."""
    answered = [(y, p) for y, p in pairs if p is not None]
    charged = [(y, p if p is not None else float(1 - y)) for y, p in pairs]

    def scores(rows: list[tuple[int, float]]) -> tuple[float | None, float | None]:
        if not rows:
            return None, None
        ys, ps = [y for y, _ in rows], [p for _, p in rows]
        return mcc(ys, ps), accuracy(ys, ps)

    mcc_answered, accuracy_answered = scores(answered)
    mcc_charged, accuracy_charged = scores(charged)
    result: dict[str, object] = {
        "labelled": len(pairs), "labelled_answered": len(answered), "labelled_missed": len(pairs) - len(answered),
        "mcc": mcc_answered, "accuracy": accuracy_answered,
        "mcc_misses_wrong": mcc_charged, "accuracy_misses_wrong": accuracy_charged,
    }
    labels = np.array([y for y, _ in charged], dtype=int)
    if np.unique(labels).size == 2:  # how far the figure could move on another set of this size
        answers = np.round(np.array([p for _, p in charged])).astype(int)
        result["mcc_misses_wrong_interval"] = metric_interval(labels, answers, rounds=1000).as_dict()
    return result
