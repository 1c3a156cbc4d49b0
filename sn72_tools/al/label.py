"""Labels for the active-learning store from what an operator has at hand: record ids, sha256 hashes, image files,
or a labelled set the eval tool reads (`0/`+`1/` or `none/`+`roadwork/` folders, a `path,label` CSV, parquet,
`datasets` folders), so nobody has to compute a hash by hand.

Images are matched to records by the sha256 of their bytes, which is how the store names them. An image the store
does not hold (evicted, or never kept: most of any large folder) is counted, reported and skipped, never fatal. Only
malformed input refuses the whole input, every bad row named: a label other than 0/1, a file that cannot be read,
one image given both labels. `skip_bad` applies the good rows anyway.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cascade.observers.al_store import ALStore
from sn72_tools.al import export as al_export
from sn72_tools.evaluation.datasets import EvalError, detect_kind, open_source

SHOWN = 5  # names of images not in the store printed (the rest counted)


@dataclass
class LabelPlan:
    """What a label input asks for, checked against the store before anything is written."""

    labels: dict[int, tuple[int, str]] = field(default_factory=dict)  # record id -> (label, where it was given)
    not_in_store: list[str] = field(default_factory=list)  # well-formed, but no record holds that image
    errors: list[str] = field(default_factory=list)  # malformed: each names its row or file

    def add(self, record_id: int, value: int, where: str) -> None:
        earlier = self.labels.get(record_id)
        if earlier is None:
            self.labels[record_id] = (value, where)
        elif earlier[0] != value:
            self.errors.append(f"{where}: record {record_id} was labelled {earlier[0]} by {earlier[1]}")

    def pairs(self) -> list[tuple[int, int]]:
        return [(record_id, value) for record_id, (value, _) in self.labels.items()]


def record_of_bytes(store: ALStore, data: bytes) -> int | None:
    row = store.db.execute("SELECT id FROM samples WHERE image_hash = ?",
                           (hashlib.sha256(data).hexdigest(),)).fetchone()
    return None if row is None else int(row[0])


def is_id_or_hash(ref: str) -> bool:
    ref = ref.strip().lower()
    return ref.isdigit() or (len(ref) == 64 and all(c in "0123456789abcdef" for c in ref))


def add_ref(store: ALStore, plan: LabelPlan, ref: str, value: int, where: str, base: Path = Path()) -> None:
    """One REF (record id, sha256, or image path relative to `base`) labelled `value`, into `plan`."""
    if is_id_or_hash(ref):
        record_id = al_export.resolve(store, ref)
    else:
        path = Path(ref).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            data = path.read_bytes()
        except OSError as exc:  # missing, a folder, unreadable: the row is wrong, not the store
            plan.errors.append(f"{where}: no record with id or sha256 {ref!r}, and no readable image file {path} "
                               f"({exc.strerror or exc})")
            return
        record_id = record_of_bytes(store, data)
    if record_id is None:
        plan.not_in_store.append(ref)
    else:
        plan.add(record_id, value, where)


def plan_from_csv(store: ALStore, path: Path) -> LabelPlan:
    """Rows `ref,label`: ref an id, a sha256 or an image path relative to the CSV's folder; label 0 or 1.

    An optional header (a first row whose last column is `label`, e.g. `path,label`), blank lines and `#` comments
    are skipped."""
    plan = LabelPlan()
    first = True
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            for row in reader:
                line, cells = reader.line_num, [cell.strip() for cell in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                header, first = first and cells[-1].lower() == "label", False
                if header:
                    continue
                if len(cells) != 2:
                    plan.errors.append(f"line {line}: expected 2 fields (id, sha256 or image path, then label), "
                                       f"got {len(cells)}")
                elif cells[1] not in ("0", "1"):
                    plan.errors.append(f"line {line}: label must be 0 or 1, got {cells[1]!r}")
                else:
                    add_ref(store, plan, cells[0], int(cells[1]), f"line {line}", path.parent)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        plan.errors.append(f"cannot read {path}: {exc}")
    return plan


def plan_from_source(store: ALStore, path: Path, progress: Callable[[int, int], None] | None = None) -> LabelPlan:
    """Every image of a labelled set the eval tool reads (its readers, `open_source`), matched by content."""
    plan = LabelPlan()
    try:
        source = open_source(path)
    except EvalError as exc:  # the reader's refusal: a bad label, a layout it does not know
        plan.errors.append(str(exc) + (" (as `--csv` the file is checked row by row: every bad row named, "
                                       "--skip-bad honoured)" if _is_csv(path) else ""))
        return plan
    for done, item in enumerate(source.items(), 1):
        try:
            data = item.read()
        except OSError as exc:
            plan.errors.append(f"{item.name}: cannot read the image ({exc.strerror or exc})")
        else:
            record_id = record_of_bytes(store, data)
            if record_id is None:
                plan.not_in_store.append(item.name)
            else:
                plan.add(record_id, item.label, item.name)
        if progress is not None:
            progress(done, source.size)
    return plan


def _is_csv(path: Path) -> bool:
    try:
        return detect_kind(path) == "csv"
    except EvalError:
        return False


def cmd_label(args: argparse.Namespace) -> int:
    """`sn72-al label`: REF 0|1, --csv FILE or --folder SOURCE (exactly one)."""
    given = [args.ref is not None, args.csv is not None, args.folder is not None]
    if sum(given) != 1 or (args.ref is not None and args.value is None):
        print("error: give exactly one of `label REF 0|1` (REF: record id, sha256 or image path), `label --csv FILE` "
              "or `label --folder DIR`", file=sys.stderr)
        return 2
    with ALStore(args.store, writer=False) as store:
        if args.folder is not None:
            plan = plan_from_source(store, args.folder, al_export.progress_printer("label: images read"))
        elif args.csv is not None:
            plan = plan_from_csv(store, args.csv)
        else:
            plan = LabelPlan()
            add_ref(store, plan, args.ref, args.value, "REF")
        for error in plan.errors:
            print(f"error: {error}", file=sys.stderr)
        if plan.errors and not args.skip_bad:
            print(f"no label applied ({len(plan.errors)} bad rows; fix them or pass --skip-bad)", file=sys.stderr)
            return 2
        vanished: list[int] = []  # evicted by the running miner since the plan was made
        changed = al_export.apply_labels(store, plan.pairs(), missing=vanished)
    print("\n".join(report_lines(plan, changed, vanished)))
    return 0


def report_lines(plan: LabelPlan, changed: int, vanished: list[int]) -> list[str]:
    labelled = len(plan.labels) - len(vanished)
    lines = [f"labelled {labelled} records: {changed} changed, {labelled - changed} already so"]
    missing = len(plan.not_in_store) + len(vanished)
    if missing:
        names = plan.not_in_store[:SHOWN] + [f"record {i}" for i in vanished][: max(0, SHOWN - len(plan.not_in_store))]
        more = f", and {missing - len(names)} more" if missing > len(names) else ""
        lines.append(f"not in the store (evicted, or never kept): {missing} images, skipped: {', '.join(names)}{more}")
    if plan.errors:
        lines.append(f"skipped {len(plan.errors)} bad rows (--skip-bad)")
    return lines
