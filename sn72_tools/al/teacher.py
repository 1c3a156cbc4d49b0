"""Teacher labels: unlabelled records of the active-learning store labelled by a cascade level where it is sure.

    sn72-al teach --cascade config/cascade.production.yaml [--level NAME] --min-confidence 0.95 [--limit N]

The records' images run through the real engine in eval mode (sn72_tools/evaluation/record.py: raw outputs
cached by content hash and model identity, so a second run costs no inference); the chosen level's calibrated
probability is the cascade's own pooling replayed (sn72_tools/evaluation/replay.py). p >= min-confidence gives 1,
p <= 1 - min-confidence gives 0, anything between is left unsure (and asked again on the next run).

Where they live and what keeps them apart from a person's labels:
- the `teacher_labels` table of the store (schema 2, cascade/observers/al_store.py), never the `label` column:
  eviction, `sn72-al export`, the eval tool's store reader and so any judge or fit set read `label` only;
- a teacher label is written only while the record has no human label (checked in the same transaction), and a
  human label given later wins: readers here take teacher labels of records whose `label` is still empty;
- each carries its source `teacher:<level>@<hash of the level's models and calibration>`, its probability, its
  confidence, the threshold and the time, so a training run can say which teacher it learnt from.
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade.observers.al_store import ALStore, migrate
from sn72_tools.al import export as al_export

TEACHER_PREFIX = "teacher:"
NO_LABEL = -1  # what a record's `Item.label` holds while the recorder runs it: the teacher is asked, not told


@dataclass(frozen=True)
class TeacherLabel:
    """One teacher label of a record that no person has labelled."""

    record_id: int
    image_hash: str
    label: int
    source: str
    probability: float
    confidence: float
    labelled_at: float
    path: Path


@dataclass
class TeachReport:
    source: str
    level: str
    min_confidence: float
    asked: int = 0  # records run through the engine (or found in its cache)
    labelled: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    unsure: int = 0
    unreadable: list[str] = field(default_factory=list)  # evicted meanwhile, or refused by the decoder
    human_meanwhile: int = 0  # a person labelled the record while the engine ran: the teacher's label is dropped

    def lines(self) -> list[str]:
        low, high = 1.0 - self.min_confidence, self.min_confidence
        lines = [f"teacher {self.source} (level {self.level}, calibrated p >= {high:g} -> 1, p <= {low:g} -> 0)",
                 f"asked {self.asked} unlabelled records: labelled 1: {self.labelled[1]}, labelled 0: "
                 f"{self.labelled[0]}, left unsure: {self.unsure}"]
        if self.human_meanwhile:
            lines.append(f"{self.human_meanwhile} records got a human label meanwhile: the teacher's was not written")
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} records could not be run (evicted meanwhile or refused), e.g. "
                         f"{self.unreadable[0]}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "level": self.level, "min_confidence": self.min_confidence,
                "asked": self.asked, "labelled": {str(k): v for k, v in self.labelled.items()}, "unsure": self.unsure,
                "unreadable": len(self.unreadable), "human_meanwhile": self.human_meanwhile}


class TeachError(Exception):
    """Bad input (a level the cascade lacks, a threshold out of range): exit 2."""


# ----- the store side -----------------------------------------------------------------------------


def has_teacher_table(store: ALStore) -> bool:
    """False for a store of schema 1 that nothing has migrated yet (it has no teacher labels)."""
    row = store.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'teacher_labels'").fetchone()
    return row is not None


def unlabelled_without_teacher(store: ALStore, limit: int | None = None) -> list[al_export.Record]:
    """Records with neither a human nor a teacher label, oldest first."""
    if not has_teacher_table(store):
        return list(al_export.iter_records(store, labelled=False, limit=limit))
    sql = ("SELECT s.id FROM samples s LEFT JOIN teacher_labels t ON t.image_hash = s.image_hash "
           "WHERE s.label IS NULL AND t.image_hash IS NULL ORDER BY s.id")
    params: list[Any] = []
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    ids = [int(row[0]) for row in store.db.execute(sql, params).fetchall()]
    return [record for record_id in ids if (record := al_export.get_record(store, record_id)) is not None]


def put_teacher_labels(store: ALStore, labels: list[tuple[str, int, float]], source: str, min_confidence: float,
                       cascade_version: str, now: float | None = None) -> set[str]:
    """Write (image_hash, label, probability) teacher labels, all in one transaction; returns the hashes written.

    A record that holds a human label by then (or is gone) gets none: the check and the write are one statement
    under SQLite's write lock, so a `sn72-al label` between the engine's answer and this write still wins."""
    migrate(store.db)
    stamp = time.time() if now is None else now
    written: set[str] = set()
    with store.transaction():
        for image_hash, label, probability in labels:
            if label not in (0, 1):
                raise ValueError(f"teacher label must be 0 or 1, got {label!r}")
            cursor = store.db.execute(
                "INSERT OR REPLACE INTO teacher_labels (image_hash, label, source, probability, confidence, "
                "min_confidence, cascade_version, labelled_at) SELECT ?, ?, ?, ?, ?, ?, ?, ? "
                "WHERE EXISTS (SELECT 1 FROM samples WHERE image_hash = ? AND label IS NULL)",
                (image_hash, label, source, probability, max(probability, 1.0 - probability), min_confidence,
                 cascade_version, stamp, image_hash),
            )
            if cursor.rowcount:
                written.add(image_hash)
    return written


def teacher_labels(store: ALStore) -> list[TeacherLabel]:
    """The teacher labels of records no person has labelled (a human label, even a later one, always wins)."""
    if not has_teacher_table(store):
        return []
    rows = store.db.execute(
        "SELECT s.id, s.ext, t.image_hash, t.label, t.source, t.probability, t.confidence, t.labelled_at "
        "FROM teacher_labels t JOIN samples s ON s.image_hash = t.image_hash WHERE s.label IS NULL ORDER BY s.id"
    ).fetchall()
    return [TeacherLabel(int(r["id"]), r["image_hash"], int(r["label"]), r["source"], float(r["probability"]),
                         float(r["confidence"]), float(r["labelled_at"]), store.image_path(r["image_hash"], r["ext"]))
            for r in rows]


def teacher_line(store: ALStore, image_hash: str, human_label: int | None) -> str | None:
    """`sn72-al show`'s line for a record's teacher label (kept, not used, once a person has labelled it)."""
    if not has_teacher_table(store):
        return None
    row = store.db.execute("SELECT label, source, probability, labelled_at FROM teacher_labels WHERE image_hash = ?",
                           (image_hash,)).fetchone()
    if row is None:
        return None
    used = "unused: a person labelled it" if human_label is not None else "training only, never a person's"
    return (f"{'teacher_label':16} {row['label']} by {row['source']} (p={row['probability']:.4f}, "
            f"{al_export.when(row['labelled_at'])} UTC; {used})")


def teacher_counts(store: ALStore) -> dict[str, dict[str, int]]:
    """source -> {"0": n, "1": n} over the teacher labels in effect (records with no human label)."""
    counts: dict[str, dict[str, int]] = {}
    for label in teacher_labels(store):
        per = counts.setdefault(label.source, {"0": 0, "1": 0})
        per[str(label.label)] += 1
    return counts


def teacher_sources(store: ALStore) -> dict[str, int]:
    """Every source's stored teacher labels, those a person has since overruled included."""
    if not has_teacher_table(store):
        return {}
    rows = store.db.execute("SELECT source, COUNT(*) FROM teacher_labels GROUP BY source ORDER BY source").fetchall()
    return {str(row[0]): int(row[1]) for row in rows}


def drop_teacher_labels(store: ALStore, sources: list[str] | None, dry_run: bool = False) -> dict[str, int]:
    """Remove the teacher labels of `sources` (None: every source) in one transaction; source -> labels dropped.

    A bad `teach` run (an uncalibrated cascade, a low threshold) is undone by its source, and its records are
    asked again by the next `teach`. A person's labels are another column and are never touched. An unknown source
    raises TeachError naming the ones the store holds."""
    held = teacher_sources(store)
    chosen = list(held) if sources is None else sources
    unknown = [source for source in chosen if source not in held]
    if unknown:
        known = ", ".join(held) or "none"
        raise TeachError(f"no teacher labels from {', '.join(unknown)} in this store (it holds: {known})")
    if not dry_run and chosen:
        with store.transaction():
            store.db.executemany("DELETE FROM teacher_labels WHERE source = ?", [(source,) for source in chosen])
    return {source: held[source] for source in chosen}


# ----- the engine side ----------------------------------------------------------------------------


def teacher_source(cascade: Any, level_index: int) -> str:
    """`teacher:<level>@<12 hex>`: the level's name and a hash of what makes its answer (every expert up to it, by
    content, and the cascade's version, which carries the calibration's hash)."""
    from cascade.model_identity import content_identity

    experts = [e for level in cascade.levels[: level_index + 1] for e in level.experts]
    parts = [cascade.version, *(f"{e.name}={content_identity(e.model)}" for e in experts)]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return f"{TEACHER_PREFIX}{cascade.levels[level_index].name}@{digest}"


def level_index(cascade: Any, name: str | None) -> int:
    names = [level.name for level in cascade.levels]
    if name is None:
        return len(names) - 1
    if name not in names:
        raise TeachError(f"the cascade has no level {name!r}; its levels: {', '.join(names)}")
    return names.index(name)


def decide(probability: float, min_confidence: float) -> int | None:
    """1 or 0 where the teacher is at least `min_confidence` sure, else None (unsure)."""
    if probability >= min_confidence:
        return 1
    if probability <= 1.0 - min_confidence:
        return 0
    return None


def _records_source(directory: Path, records: list[al_export.Record]) -> Any:
    from sn72_tools.evaluation.datasets import Item, Source

    def items() -> Iterator[Item]:
        for record in records:
            yield Item(f"al record {record.id} ({record.image_hash[:12]})", NO_LABEL, record.path.read_bytes)

    return Source(directory, "al-unlabelled", len(records), items, [])


def teach(directory: Path, cascade_path: Path, *, level: str | None, min_confidence: float, limit: int | None,
          cache_dir: Path, progress: bool = True) -> TeachReport:
    """Run the store's records with no label of either kind through the cascade; write the confident answers."""
    from cascade import consensus
    from cascade.config import load_cascade
    from sn72_tools.evaluation import record, replay

    if not 0.5 < min_confidence <= 1.0:
        raise TeachError(f"--min-confidence must lie in (0.5, 1], got {min_confidence}")
    try:
        cascade = load_cascade(cascade_path)
    except (ValueError, OSError) as exc:
        raise TeachError(f"invalid cascade {cascade_path}: {exc}") from exc
    index = level_index(cascade, level)
    source = teacher_source(cascade, index)
    report = TeachReport(source, cascade.levels[index].name, min_confidence)
    with ALStore(directory, writer=False) as store:
        records = unlabelled_without_teacher(store, limit)
    if not records:
        return report
    engine = record.EvalEngine(cascade)
    cache = record.OutputCache(cache_dir)
    try:
        recording = record.record(_records_source(directory, records), cascade, engine, cache, progress=progress)
    finally:
        engine.close()
        cache.close()
    report.unreadable = [f"{s.name}: {s.reason}" for s in recording.skipped]
    report.asked = len(recording.hashes)
    pooling = consensus.Pooling.from_config(cascade)
    probabilities = replay.level_probabilities(cascade, pooling, recording.experts, recording.outputs)[:, index]
    confident: list[tuple[str, int, float]] = []
    for image_hash, probability in zip(recording.hashes, probabilities.tolist(), strict=True):
        label = decide(probability, min_confidence)
        if label is None:
            report.unsure += 1
        else:
            confident.append((image_hash, label, probability))
    with ALStore(directory, writer=False) as store:
        written = put_teacher_labels(store, confident, source, min_confidence, cascade.version)
    report.human_meanwhile = len(confident) - len(written)
    for image_hash, label, _ in confident:
        report.labelled[label] += image_hash in written  # what was written, not what was answered
    return report


def cmd_unteach(args: argparse.Namespace) -> int:
    if bool(args.sources) == args.all:
        print("error: name the teacher sources to drop (as `sn72-al stats` prints them), or --all", file=sys.stderr)
        return 2
    try:
        with ALStore(args.store, writer=False) as store:
            dropped = drop_teacher_labels(store, None if args.all else list(args.sources), dry_run=args.dry_run)
            left = sum(teacher_sources(store).values())
    except TeachError as exc:  # a database error is the CLI's (exit 1), as for every command
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = "would drop" if args.dry_run else "dropped"
    for source, count in dropped.items():
        print(f"{verb} {count} teacher labels of {source}")
    print(f"{left} teacher labels {'in the store' if args.dry_run else 'left'}; a person's labels are untouched")
    return 0


def cmd_teach(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    try:
        report = teach(args.store, args.cascade, level=args.level, min_confidence=args.min_confidence,
                       limit=args.limit, cache_dir=args.cache, progress=not args.no_progress)
    except TeachError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"error: {exc!r}", file=sys.stderr)
        return 1
    if report.asked == 0 and not report.unreadable:
        print(f"teacher {report.source}: no record without a label (human or teacher) to ask about")
        return 0
    print("\n".join(report.lines()))
    return 0
