"""Labelled image sets the eval reads: image folders, CSV, parquet, `save_to_disk` datasets, the AL store.

Every reader yields `Item`s (a name, a 0/1 label, a way to read the bytes) lazily, so a large set is
never held in memory. A label that cannot be read is an `EvalError` naming where it is; an image
that cannot be read is the recorder's business (skipped, counted, named).
"""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
FOLDER_LAYOUTS = (("0", "1"), ("none", "roadwork"))
KINDS = ("auto", "folder", "csv", "parquet", "hf", "al")
_LABEL_WORDS = {"0": 0, "1": 1, "none": 0, "roadwork": 1, "false": 0, "true": 1, "no": 0, "yes": 1}


class EvalError(Exception):
    """Bad input the operator has to fix; the message says what and where."""


@dataclass(frozen=True)
class Item:
    name: str  # where the image came from, for the report (path, row, record id)
    label: int
    read: Callable[[], bytes]


@dataclass
class Source:
    """A labelled set: what it is, how many items it holds, and the items."""

    path: Path
    kind: str
    size: int
    items: Callable[[], Iterator[Item]]
    notes: list[str]

    def describe(self) -> str:
        return f"{self.kind}:{self.path}"


def parse_label(value: Any, where: str) -> int:
    """0/1 from a number, a bool or a word (0/1, none/roadwork, no/yes, false/true)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_WORDS:
        return _LABEL_WORDS[value.strip().lower()]
    raise EvalError(f"{where}: label {value!r} is not 0/1 (or none/roadwork)")


def _read_file(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def open_folder(path: Path) -> Source:
    """`0/` and `1/` (the active-learning export) or `none/` and `roadwork/` subfolders of images."""
    children = {child.name.lower(): child for child in path.iterdir() if child.is_dir()}
    for negative, positive in FOLDER_LAYOUTS:
        if negative in children or positive in children:
            break
    else:
        raise EvalError(f"{path}: expected subfolders 0/ and 1/ or none/ and roadwork/, found {sorted(children)}")
    files = [
        (file, label)
        for label, folder_name in enumerate((negative, positive))
        if folder_name in children
        for file in sorted(children[folder_name].rglob("*"))
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES
    ]
    ignored = sorted(set(children) - {negative, positive})
    notes = [f"subfolders ignored (no label): {ignored}"] if ignored else []

    def items() -> Iterator[Item]:
        for file, label in files:
            yield Item(str(file.relative_to(path)), label, _read_file(file))

    return Source(path, "folder", len(files), items, notes)


def open_csv(path: Path) -> Source:
    """A CSV with a header holding `path` (relative to the CSV's folder, or absolute) and `label`."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvalError(f"{path}: cannot read the CSV ({exc})") from exc
    if not {"path", "label"} <= set(header):
        raise EvalError(f"{path}: the header needs columns path,label; found {header}")
    entries = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        label = parse_label(row["label"], f"{path}:{line}")
        if not row["path"]:
            raise EvalError(f"{path}:{line}: empty path")
        entries.append((row["path"], path.parent / row["path"], label))

    def items() -> Iterator[Item]:
        for name, file, label in entries:
            yield Item(name, label, _read_file(file))

    return Source(path, "csv", len(entries), items, [])


def _image_bytes(value: Any, base: Path, where: str) -> Callable[[], bytes]:
    """Bytes of an image cell: raw bytes, or HF's {bytes, path} struct (path relative to `base`)."""
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        return lambda: data
    if isinstance(value, dict):
        if value.get("bytes"):
            data = bytes(value["bytes"])
            return lambda: data
        if value.get("path"):
            return _read_file(base / value["path"])
    raise EvalError(f"{where}: the image cell holds neither bytes nor a path ({type(value).__name__})")


def open_parquet(path: Path, image_column: str = "image", label_column: str = "label") -> Source:
    """A parquet file (the AL export's, or HF's): an image column (bytes or {bytes, path}) and a label."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for non-parquet data
        raise EvalError(f"{path}: cannot read the parquet file ({exc})") from exc
    columns = parquet.schema_arrow.names
    for column in (image_column, label_column):
        if column not in columns:
            raise EvalError(f"{path}: no column {column!r}; columns are {columns}")
    labels = [parse_label(v, f"{path} row {i}") for i, v in
              enumerate(parquet.read(columns=[label_column]).column(label_column).to_pylist())]

    def items() -> Iterator[Item]:
        row = 0
        for batch in parquet.iter_batches(batch_size=64, columns=[image_column]):
            for value in batch.column(0).to_pylist():
                yield Item(f"row {row}", labels[row], _image_bytes(value, path.parent, f"{path} row {row}"))
                row += 1

    return Source(path, "parquet", len(labels), items, [])


def open_hf(path: Path, split: str | None = None, image_column: str = "image", label_column: str = "label") -> Source:
    """A `datasets` folder written by `save_to_disk` (a Dataset, or a DatasetDict and a split)."""
    import datasets as hf

    try:
        loaded = hf.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise EvalError(f"{path}: not a dataset saved with save_to_disk ({exc})") from exc
    if isinstance(loaded, hf.DatasetDict):
        splits = list(loaded)
        chosen = split or ("test" if "test" in loaded else splits[0] if len(splits) == 1 else None)
        if chosen not in loaded:
            raise EvalError(f"{path}: choose a split with --split; it holds {splits}")
        dataset, where = loaded[chosen], f"{path}[{chosen}]"
    else:
        dataset, where = loaded, str(path)
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise EvalError(f"{where}: no column {column!r}; columns are {dataset.column_names}")
    feature = dataset.features[label_column]
    names = getattr(feature, "names", None)  # a ClassLabel: map its names, whatever their order
    raw = dataset[label_column]
    labels = [parse_label(names[v] if names else v, f"{where} row {i}") for i, v in enumerate(raw)]
    if isinstance(dataset.features[image_column], hf.Image):
        dataset = dataset.cast_column(image_column, hf.Image(decode=False))
    images = dataset.select_columns([image_column])

    def items() -> Iterator[Item]:
        for row, record in enumerate(images):
            yield Item(f"row {row}", labels[row], _image_bytes(record[image_column], path, f"{where} row {row}"))

    return Source(path, f"hf[{split}]" if split else "hf", len(labels), items, [])


def open_al_store(path: Path) -> Source:
    """The labelled records of an active-learning store, read directly (read-only, safe beside a miner)."""
    from cascade.observers.al_store import ALStore, StoreError
    from sn72_tools.al.export import count_records, iter_records

    try:
        with ALStore(path, writer=False) as store:
            records = list(iter_records(store, labelled=True))
            unlabelled = count_records(store, labelled=False)
    except StoreError as exc:
        raise EvalError(str(exc)) from exc
    except sqlite3.Error as exc:
        raise EvalError(f"{path}: cannot read the active-learning store ({exc})") from exc
    notes = [f"{unlabelled} unlabelled records left out (label them with sn72-al label)"] if unlabelled else []

    def items() -> Iterator[Item]:
        for record in records:
            assert record.label is not None
            yield Item(f"al record {record.id} ({record.image_hash[:12]})", record.label, _read_file(record.path))

    return Source(path, "al", len(records), items, notes)


def detect_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "index.sqlite").is_file():
            return "al"
        if any((path / name).is_file() for name in ("dataset_dict.json", "dataset_info.json", "state.json")):
            return "hf"
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    raise EvalError(f"{path}: cannot tell what this is; name it with --format ({', '.join(KINDS[1:])})")


def open_source(path: Path, kind: str = "auto", split: str | None = None, image_column: str = "image",
                label_column: str = "label") -> Source:
    """The labelled set at `path`; refuses a missing path and a set with no labelled image."""
    if not path.exists():
        raise EvalError(f"{path}: no such file or folder")
    kind = detect_kind(path) if kind == "auto" else kind
    openers: dict[str, Callable[[], Source]] = {
        "folder": lambda: open_folder(path),
        "csv": lambda: open_csv(path),
        "parquet": lambda: open_parquet(path, image_column, label_column),
        "hf": lambda: open_hf(path, split, image_column, label_column),
        "al": lambda: open_al_store(path),
    }
    if kind not in openers:
        raise EvalError(f"unknown format {kind!r}; known: {', '.join(KINDS)}")
    source = openers[kind]()
    if source.size == 0:
        raise EvalError(f"{source.describe()}: no labelled images in it")
    return source
