"""Reading the active-learning store: records, labels, and exports for training.

Everything here works on a store opened with `writer=False`, so it is safe beside a running miner:
reads see committed records only, label updates are single SQLite transactions. An image evicted
between listing and copying is reported as missing, never exported half-written.

Exports:
    folder:  out/0/<hash>.<ext>, out/1/..., (out/unlabelled/... on request), out/metadata.csv
             (a `file_name` column, as HF `imagefolder` reads it)
    parquet: one row per image; `image` is a struct {bytes, path}, which HF `datasets` reads as its
             Image feature (the schema carries the HF feature metadata to say so).
Both are written under a temporary name and renamed at the end: a failed export leaves nothing
that looks finished.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cascade.observers.al_store import ALStore, Reason

Progress = Callable[[int, int], None]  # (done, total)


class ExportError(Exception):
    """An export that cannot start (its target exists) or cannot finish."""


@dataclass(frozen=True)
class Record:
    """One stored record, as read back."""

    id: int
    image_hash: str
    ext: str
    nbytes: int
    width: int | None
    height: int | None
    created_at: float
    last_seen_at: float
    seen: int
    hotkey: str
    probability: float
    experts: list[dict[str, Any]]
    levels_run: int
    status: str
    reason: str
    label: int | None
    label_source: str | None
    cascade_version: str
    path: Path


@dataclass
class ExportReport:
    written: int = 0
    missing: list[int] = field(default_factory=list)  # records whose image vanished (evicted meanwhile)
    by_label: dict[str, int] = field(default_factory=dict)


# ----- queries ------------------------------------------------------------------------------------


def _record(store: ALStore, row: Any) -> Record:
    values = {key: row[key] for key in row.keys() if key != "reason_rank"}  # noqa: SIM118 - a Row, not a dict
    values["experts"] = json.loads(values["experts"])
    return Record(**values, path=store.image_path(row["image_hash"], row["ext"]))


def _where(reason: str | None, labelled: bool | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if reason is not None:
        clauses.append("reason = ?")
        params.append(reason)
    if labelled is not None:
        clauses.append("label IS NOT NULL" if labelled else "label IS NULL")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def resolve(store: ALStore, ref: str) -> int | None:
    """A record id from an id or a full sha256 hex hash; None when there is no such record."""
    ref = ref.strip().lower()
    if len(ref) == 64 and all(c in "0123456789abcdef" for c in ref):
        row = store.db.execute("SELECT id FROM samples WHERE image_hash = ?", (ref,)).fetchone()
    elif ref.isdigit():
        row = store.db.execute("SELECT id FROM samples WHERE id = ?", (int(ref),)).fetchone()
    else:
        return None
    return None if row is None else int(row[0])


def get_record(store: ALStore, record_id: int) -> Record | None:
    row = store.db.execute("SELECT * FROM samples WHERE id = ?", (record_id,)).fetchone()
    return None if row is None else _record(store, row)


def iter_records(
    store: ALStore, *, reason: str | None = None, labelled: bool | None = None, limit: int | None = None
) -> Iterator[Record]:
    """Records oldest first, optionally of one reason and only labelled (True) or unlabelled (False)."""
    where, params = _where(reason, labelled)
    sql = f"SELECT * FROM samples{where} ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    # fetchall: records are small (no image bytes), and no read statement stays open across writes.
    for row in store.db.execute(sql, params).fetchall():
        yield _record(store, row)


def count_records(store: ALStore, *, reason: str | None = None, labelled: bool | None = None) -> int:
    where, params = _where(reason, labelled)
    return int(store.db.execute(f"SELECT COUNT(*) FROM samples{where}", params).fetchone()[0])


def summary(store: ALStore) -> dict[str, Any]:
    row = store.db.execute(
        "SELECT COUNT(*), COALESCE(SUM(nbytes), 0), COALESCE(SUM(seen), 0), MIN(created_at), MAX(last_seen_at)"
        " FROM samples"
    ).fetchone()
    by_reason = dict(store.db.execute("SELECT reason, COUNT(*) FROM samples GROUP BY reason").fetchall())
    labels = {
        ("unlabelled" if label is None else str(label)): n
        for label, n in store.db.execute("SELECT label, COUNT(*) FROM samples GROUP BY label").fetchall()
    }
    return {
        "items": int(row[0]), "bytes": int(row[1]), "sightings": int(row[2]), "oldest": row[3], "newest": row[4],
        "by_reason": {r.value: int(by_reason.get(r.value, 0)) for r in Reason},
        "labels": {key: int(labels.get(key, 0)) for key in ("0", "1", "unlabelled")},
    }


# ----- labels -------------------------------------------------------------------------------------


def apply_labels(store: ALStore, labels: Sequence[tuple[int, int]], source: str = "manual",
                 missing: list[int] | None = None) -> int:
    """Set labels by record id, all or nothing; returns how many changed. An unknown id is a KeyError, or, when
    `missing` is given, appended there and skipped (a running miner may evict a record between lookup and label)."""
    changed = 0
    with store.transaction():
        for record_id, value in labels:
            if value not in (0, 1):
                raise ValueError(f"label must be 0 or 1, got {value!r}")
            old = store.db.execute("SELECT label FROM samples WHERE id = ?", (record_id,)).fetchone()
            if old is None:
                if missing is None:
                    raise KeyError(record_id)
                missing.append(record_id)
                continue
            changed += int(old["label"] != value)
            store.db.execute("UPDATE samples SET label = ?, label_source = ? WHERE id = ?", (value, source, record_id))
    return changed


def prune(
    store: ALStore, *, older_than_s: float | None = None, now_s: float | None = None, max_items: int | None = None,
    max_bytes: int | None = None, dry_run: bool = False,
) -> list[int]:
    """Drop unlabelled records not seen for `older_than_s`, then evict in the store's eviction order
    (labelled ones last, but included) down to `max_items`/`max_bytes`. Returns the ids dropped.
    Needs a writer store: the miner must not be running."""
    victims: dict[int, int] = {}  # id -> nbytes
    if older_than_s is not None:
        cutoff = (time.time() if now_s is None else now_s) - older_than_s
        for row in store.db.execute(
            "SELECT id, nbytes FROM samples WHERE label IS NULL AND last_seen_at < ?", (cutoff,)
        ).fetchall():
            victims[row["id"]] = row["nbytes"]
    items, size = store.items - len(victims), store.total_bytes - sum(victims.values())
    if max_items is not None or max_bytes is not None:
        with contextlib.closing(store.eviction_order()) as rows:
            for row in rows:
                if (max_items is None or items <= max_items) and (max_bytes is None or size <= max_bytes):
                    break
                if row["id"] not in victims:
                    victims[row["id"]] = row["nbytes"]
                    items, size = items - 1, size - row["nbytes"]
    if victims and not dry_run:
        store.delete(sorted(victims))
    return sorted(victims)


# ----- exports ------------------------------------------------------------------------------------


def _selection(store: ALStore, include_unlabelled: bool, reason: str | None) -> list[Record]:
    """The records to export; ExportError when there are none (an empty file trains nothing and loads nowhere)."""
    records = list(iter_records(store, reason=reason, labelled=None if include_unlabelled else True))
    if not records:
        which = "records" if include_unlabelled else "labelled records"
        unlabelled = "" if include_unlabelled else (
            f" ({count_records(store, reason=reason, labelled=False)} unlabelled: label them with `sn72-al label`, "
            "or pass --include-unlabelled)")
        raise ExportError(f"nothing to export: no {which}{f' with reason {reason}' if reason else ''}{unlabelled}")
    return records


def _label_name(record: Record) -> str:
    return "unlabelled" if record.label is None else str(record.label)


_META_FIELDS = (
    "id", "image_hash", "reason", "status", "probability", "levels_run", "width", "height", "nbytes", "seen",
    "created_at", "last_seen_at", "hotkey", "label_source", "cascade_version",
)


def export_folder(
    store: ALStore, out: Path, *, include_unlabelled: bool = False, reason: str | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Images under out/<label>/, and out/metadata.csv; `out` must not exist yet."""
    if out.exists():
        raise ExportError(f"{out} already exists; export into a new folder")
    records = _selection(store, include_unlabelled, reason)
    staging = out.with_name(f".{out.name}.part")
    shutil.rmtree(staging, ignore_errors=True)  # a previous export that died half-way
    staging.mkdir(parents=True)
    report = ExportReport()
    with (staging / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "label", *_META_FIELDS, "experts"])
        writer.writeheader()
        for done, record in enumerate(records, 1):
            name = _label_name(record)
            relative = f"{name}/{record.image_hash}.{record.ext}"
            (staging / name).mkdir(exist_ok=True)
            try:
                shutil.copyfile(record.path, staging / relative)
            except FileNotFoundError:
                report.missing.append(record.id)
            else:
                row = {key: getattr(record, key) for key in _META_FIELDS}
                row.update(file_name=relative, label="" if record.label is None else record.label,
                           experts=json.dumps(record.experts))
                writer.writerow(row)
                report.written += 1
                report.by_label[name] = report.by_label.get(name, 0) + 1
            if progress is not None:
                progress(done, len(records))
    os.replace(staging, out)
    return report


def _parquet_schema() -> Any:
    import pyarrow as pa

    columns: list[tuple[str, Any, str]] = [
        ("label", pa.int64(), "int64"), ("image_hash", pa.string(), "string"), ("id", pa.int64(), "int64"),
        ("reason", pa.string(), "string"), ("status", pa.string(), "string"),
        ("probability", pa.float64(), "float64"), ("experts", pa.string(), "string"),
        ("levels_run", pa.int64(), "int64"), ("width", pa.int64(), "int64"), ("height", pa.int64(), "int64"),
        ("nbytes", pa.int64(), "int64"), ("seen", pa.int64(), "int64"), ("created_at", pa.float64(), "float64"),
        ("last_seen_at", pa.float64(), "float64"), ("hotkey", pa.string(), "string"),
        ("label_source", pa.string(), "string"), ("cascade_version", pa.string(), "string"),
    ]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    features.update({name: {"dtype": dtype, "_type": "Value"} for name, _, dtype in columns})
    # HF datasets takes a column's feature from this metadata when the arrow type matches it exactly.
    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema([("image", image_type), *[(name, typ) for name, typ, _ in columns]], metadata=metadata)


def export_parquet(
    store: ALStore, out: Path, *, include_unlabelled: bool = False, reason: str | None = None,
    progress: Progress | None = None, rows_per_group: int = 256,
) -> ExportReport:
    """One parquet file, written in row groups of `rows_per_group` images so memory stays bounded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if out.exists():
        raise ExportError(f"{out} already exists; choose a new file name")
    schema = _parquet_schema()
    staging = out.with_name(f".{out.name}.part")
    records = _selection(store, include_unlabelled, reason)
    report = ExportReport()
    batch: dict[str, list[Any]] = {name: [] for name in schema.names}
    try:
        with pq.ParquetWriter(staging, schema) as writer:
            for done, record in enumerate(records, 1):
                try:
                    data = record.path.read_bytes()
                except FileNotFoundError:
                    report.missing.append(record.id)
                else:
                    batch["image"].append({"bytes": data, "path": f"{record.image_hash}.{record.ext}"})
                    batch["experts"].append(json.dumps(record.experts))
                    for name in schema.names[1:]:
                        if name != "experts":
                            batch[name].append(getattr(record, name))
                    report.written += 1
                    report.by_label[_label_name(record)] = report.by_label.get(_label_name(record), 0) + 1
                if len(batch["image"]) >= rows_per_group or (done == len(records) and batch["image"]):
                    writer.write_table(pa.Table.from_pydict(batch, schema=schema))
                    batch = {name: [] for name in schema.names}
                if progress is not None:
                    progress(done, len(records))
        os.replace(staging, out)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return report


# ----- text for the operator ----------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
LIST_HEADER = f"{'id':>8}  {'time (UTC)':19}  {'reason':12}  {'status':9}  {'p':>5}  label  {'seen':>4}  image"


def parse_size(text: str) -> int:
    """'500M', '20G', '1024' -> bytes (binary units); an argparse type."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1024, 500M, 20G)") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"size must be >= 0, got {text!r}")
    return int(number * _SIZE_UNITS[unit])


def when(seconds: float | None) -> str:
    return "-" if seconds is None else datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_summary(directory: Path, info: dict[str, Any], problems: list[str]) -> list[str]:
    return [
        f"store      {directory}",
        f"records    {info['items']} ({info['bytes'] / 1024**2:.1f} MiB), seen {info['sightings']} times in all",
        f"time span  {when(info['oldest'])} .. {when(info['newest'])} UTC",
        "by reason  " + ", ".join(f"{reason}={n}" for reason, n in info["by_reason"].items()),
        "labels     " + ", ".join(f"{label}={n}" for label, n in info["labels"].items()),
        f"integrity  {'ok' if problems == ['ok'] else '; '.join(problems[:5])}",
    ]


def format_row(r: Record) -> str:
    label = "-" if r.label is None else str(r.label)
    return (f"{r.id:>8}  {when(r.created_at)}  {r.reason:12}  {r.status:9}  {r.probability:5.3f}  {label:>5}  "
            f"{r.seen:>4}  {r.image_hash[:16]}.{r.ext} {r.nbytes}B")


def format_record(record: Record) -> list[str]:
    lines = [
        f"{key:16} {getattr(record, key)}"
        for key in ("id", "image_hash", "reason", "status", "probability", "levels_run", "label", "label_source",
                    "seen", "hotkey", "cascade_version", "nbytes", "width", "height")
    ]
    lines.append(f"{'created_at':16} {when(record.created_at)} UTC")
    lines.append(f"{'last_seen_at':16} {when(record.last_seen_at)} UTC")
    lines.append(f"{'image':16} {record.path}{'' if record.path.exists() else '  (missing)'}")
    lines.extend(
        f"  level {a['level']}  {a['expert']:24} p={a['probability']:.4f} logit={a['logit']:+.3f} "
        f"weight={a['weight']:g}"
        for a in record.experts
    )
    return lines


def progress_printer(what: str, stream: Any = None, every_s: float = 1.0) -> Progress:
    """Progress lines on stderr, at most one per `every_s`, and always the last one."""
    last = [float("-inf")]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= every_s:
            last[0] = now
            print(f"{what}: {done}/{total}", file=stream or sys.stderr, flush=True)

    return report
