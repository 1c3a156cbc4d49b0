"""The active-learning store: images on disk by content hash, one SQLite record per kept image.

Layout of a store folder:
    images/ab/<sha256>.<ext>    the encoded image exactly as received, written once
    tmp/                        images being written; anything here at open is a crash leftover
    index.sqlite (+ -wal/-shm)  the records, WAL mode, synchronous=FULL
    .lock                       flock held by the one process allowed to write files (the miner)

Durability order, which is why a crash never leaves a record without its image:
    1. image -> tmp file, fsync, os.replace into images/, fsync the folder
    2. record -> SQLite transaction, COMMIT (durable on return: WAL + synchronous=FULL)
    3. only now is the record acknowledged; images of evicted records are unlinked after the commit.
A crash between 1 and 2 leaves an image with no record, one after 2 an evicted image with no record:
recovery at open removes both, and whatever is left in tmp/.

Eviction (when a new image would break max_items or max_bytes): unlabelled records go before labelled
ones, then the least informative reason first (Reason order), then the least recently seen. A new
image never displaces a record that ranks above it; then the new one is refused instead.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

SCHEMA_VERSION = 2  # 2: teacher labels (migrate); a version-1 store opens and is migrated in place
INDEX_NAME = "index.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an evicted id is never reused
    image_hash TEXT NOT NULL UNIQUE,
    ext TEXT NOT NULL,
    nbytes INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    seen INTEGER NOT NULL DEFAULT 1,
    hotkey TEXT NOT NULL,
    probability REAL NOT NULL,
    experts TEXT NOT NULL,
    levels_run INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    reason_rank INTEGER NOT NULL,
    label INTEGER CHECK (label IN (0, 1)),
    label_source TEXT,
    cascade_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_eviction ON samples ((label IS NOT NULL), reason_rank, last_seen_at, id);
CREATE INDEX IF NOT EXISTS samples_reason ON samples (reason);
"""
# Version 2: labels a model gave (`sn72-al teach`), kept apart from the human `label` column, so that nothing that
# reads `label` (eviction, exports, the eval tool's store reader, a judge set) can take one for a person's. Keyed by
# content hash, as the data roles name images; a deleted or evicted record takes its teacher label with it.
_TEACHER_SCHEMA = """
CREATE TABLE IF NOT EXISTS teacher_labels (
    image_hash TEXT PRIMARY KEY,
    label INTEGER NOT NULL CHECK (label IN (0, 1)),
    source TEXT NOT NULL,  -- teacher:<level>@<content hash of the level's models and calibration>
    probability REAL NOT NULL,  -- the level's calibrated P(roadwork)
    confidence REAL NOT NULL,  -- max(p, 1 - p)
    min_confidence REAL NOT NULL,
    cascade_version TEXT NOT NULL,
    labelled_at REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS teacher_labels_follow_samples AFTER DELETE ON samples BEGIN
    DELETE FROM teacher_labels WHERE image_hash = OLD.image_hash;
END;
"""


def migrate(db: sqlite3.Connection) -> None:
    """Bring a store's schema to SCHEMA_VERSION in one transaction (additive: code of version 1 ignores the table).

    The miner runs it at open; `sn72-al teach` too, beside a running miner (SQLite's write lock orders them)."""
    if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        db.executescript(f"BEGIN IMMEDIATE; {_TEACHER_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")


# The ORDER BY repeats the index's expressions exactly, so SQLite walks the index instead of sorting.
_EVICTION_ORDER = (
    "SELECT id, image_hash, ext, nbytes, (label IS NOT NULL) AS labelled, reason_rank FROM samples "
    "ORDER BY (label IS NOT NULL), reason_rank, last_seen_at, id"
)


class StoreError(Exception):
    """A store problem the operator has to see: missing, held by another process, corrupt."""


class StoreMissing(StoreError):
    """The folder holds no store (a reader never creates one)."""


class StoreBusy(StoreError):
    """Another process holds the writer's lock (a running miner)."""


class StoreCorrupt(StoreError):
    """SQLite's integrity_check failed: left for the operator, never repaired by deleting data."""


class Reason(enum.StrEnum):
    """Why a request was kept, least informative first: this order is the eviction order."""

    SAMPLE = "sample"  # random share of ordinary answers (calibration, drift)
    UNCERTAIN = "uncertain"  # pooled probability near 0.5
    DISAGREEMENT = "disagreement"  # experts far apart
    DEADLINE = "deadline"  # the deadline cut the cascade short (status DEADLINE or PRIOR)
    LABELLED = "labelled"  # came with a testnet label

    @property
    def rank(self) -> int:
        return list(Reason).index(self)


class AddOutcome(enum.StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"  # the image was already stored: its record's `seen` went up
    REJECTED = "rejected"  # no room without evicting something more informative


@dataclass(frozen=True)
class AddResult:
    outcome: AddOutcome
    record_id: int | None
    evicted: tuple[int, ...] = ()


@dataclass(frozen=True)
class Sample:
    """What the observer hands the store. Times are wall-clock: records outlive the process."""

    image: bytes
    reason: Reason
    created_at: float
    hotkey: str = ""
    width: int | None = None
    height: int | None = None
    probability: float = 0.5
    experts: tuple[dict[str, Any], ...] = ()
    levels_run: int = 0
    status: str = ""
    label: int | None = None  # 0/1 when known (a testnet label)
    cascade_version: str = ""


_MAGIC = (
    (0, b"\xff\xd8\xff", "jpg"), (0, b"\x89PNG\r\n\x1a\n", "png"), (8, b"WEBP", "webp"), (0, b"GIF8", "gif"),
    (0, b"BM", "bmp"), (0, b"II*\x00", "tif"), (0, b"MM\x00*", "tif"),
)


def image_extension(data: bytes) -> str:
    """File extension from the magic bytes (the encoding is kept as received, never re-encoded)."""
    for offset, magic, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return ext
    return "bin"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ALStore:
    """The store. `writer=True` (the miner, `prune`) takes the folder's lock and runs recovery;
    `writer=False` (list, show, export, label) only reads and updates labels, safe beside a running miner.
    Not thread-safe: one thread uses one instance (the observer's writer thread). Queries and label
    updates live in al_export.py, on `db`."""

    def __init__(
        self, directory: Path | str, *, max_items: int | None = None, max_bytes: int | None = None, writer: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.images_dir = self.directory / "images"
        self.tmp_dir = self.directory / "tmp"
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.writer = writer
        self._lock_fd: int | None = None
        self._shards: set[str] = set()
        self._db: sqlite3.Connection | None = None
        self.last_recovery: dict[str, int] = {}  # what the last recover() found (for logs and tests)
        if writer:
            for folder in (self.directory, self.images_dir, self.tmp_dir):
                if not folder.is_dir():
                    folder.mkdir(parents=True, exist_ok=True)
                    _fsync_dir(folder.parent)
            self._lock_fd = self._take_lock()
        elif not (self.directory / INDEX_NAME).is_file():
            raise StoreMissing(f"no active-learning store at {self.directory} ({INDEX_NAME} not found)")
        try:
            self._db = sqlite3.connect(
                self.directory / INDEX_NAME, isolation_level=None, timeout=10.0, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"store {self.directory} has schema {version}; this code knows {SCHEMA_VERSION}")
            if writer:
                self.db.executescript(_SCHEMA)
                migrate(self.db)
                self.recover()
            row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM samples").fetchone()
            self.items, self.total_bytes = int(row[0]), int(row[1])
        except BaseException:
            self.close()
            raise

    # ----- opening and recovery -------------------------------------------------------------------

    def _take_lock(self) -> int:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreBusy(f"store {self.directory} is held by another process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def recover(self) -> dict[str, int]:
        """Make files and records agree after a crash; the SQLite side recovers itself from the WAL."""
        self._require_writer()
        report = {"tmp_removed": 0, "records_without_image": 0, "images_without_record": 0}
        for entry in os.scandir(self.tmp_dir):
            Path(entry.path).unlink(missing_ok=True)
            report["tmp_removed"] += 1
        problems = self.integrity_check()
        if problems != ["ok"]:
            raise StoreCorrupt(f"store {self.directory}: integrity_check failed: {'; '.join(problems[:5])}")
        on_disk: dict[str, tuple[Path, int]] = {}
        for shard in os.scandir(self.images_dir):
            if not shard.is_dir(follow_symlinks=False):
                on_disk[shard.name] = (Path(shard.path), -1)  # nothing but shard folders belongs here
                continue
            self._shards.add(shard.name)
            for entry in os.scandir(shard.path):
                on_disk[f"{shard.name}/{entry.name}"] = (Path(entry.path), entry.stat(follow_symlinks=False).st_size)
        keep: set[str] = set()
        lost: list[tuple[int]] = []
        for row in self.db.execute("SELECT id, image_hash, ext, nbytes FROM samples"):
            name = f"{row['image_hash'][:2]}/{row['image_hash']}.{row['ext']}"
            # A size mismatch cannot come from our own writes (tmp + fsync + rename); treat it as lost.
            if on_disk.get(name, (None, -2))[1] == row["nbytes"]:
                keep.add(name)
            else:
                lost.append((row["id"],))
        if lost:
            with self.transaction():
                self.db.executemany("DELETE FROM samples WHERE id = ?", lost)
        report["records_without_image"] = len(lost)
        for name, (path, _) in on_disk.items():
            if name not in keep:
                path.unlink(missing_ok=True)
                report["images_without_record"] += 1
        if any(report.values()):
            logger.warning("active-learning store {} recovered: {}", self.directory, report)
        self.last_recovery = report
        return report

    def integrity_check(self) -> list[str]:
        return [str(row[0]) for row in self.db.execute("PRAGMA integrity_check")]

    # ----- writing --------------------------------------------------------------------------------

    def add(self, sample: Sample) -> AddResult:
        """Store one sample; returns only once the record and its image are durable."""
        self._require_writer()
        data = sample.image
        digest = hashlib.sha256(data).hexdigest()
        ext = image_extension(data)
        created: Path | None = None
        victims: list[sqlite3.Row] = []
        # IMMEDIATE: take SQLite's write lock now, so a concurrent `label` cannot slip in between
        # the duplicate check and the insert.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute(
                "SELECT id, reason_rank FROM samples WHERE image_hash = ?", (digest,)
            ).fetchone()
            if row is not None:
                self._merge_duplicate(row["id"], row["reason_rank"], sample)
                self.db.execute("COMMIT")
                return AddResult(AddOutcome.DUPLICATE, int(row["id"]))
            planned = self._plan_eviction(len(data), sample.label is not None, sample.reason.rank)
            if planned is None:
                self.db.execute("ROLLBACK")
                return AddResult(AddOutcome.REJECTED, None)
            victims = planned
            path = self.image_path(digest, ext)
            self._write_image(path, data)
            created = path
            self.db.executemany("DELETE FROM samples WHERE id = ?", [(v["id"],) for v in victims])
            cursor = self.db.execute(
                "INSERT INTO samples (image_hash, ext, nbytes, width, height, created_at, last_seen_at, hotkey, "
                "probability, experts, levels_run, status, reason, reason_rank, label, label_source, cascade_version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    digest, ext, len(data), sample.width, sample.height, sample.created_at, sample.created_at,
                    sample.hotkey, sample.probability, json.dumps(list(sample.experts)), sample.levels_run,
                    sample.status, sample.reason.value, sample.reason.rank, sample.label,
                    None if sample.label is None else "testnet", sample.cascade_version,
                ),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            if created is not None:  # no committed record points at it
                created.unlink(missing_ok=True)
            raise
        self._unlink_images(victims)
        self.items += 1 - len(victims)
        self.total_bytes += len(data) - sum(v["nbytes"] for v in victims)
        assert cursor.lastrowid is not None
        return AddResult(AddOutcome.ADDED, cursor.lastrowid, tuple(v["id"] for v in victims))

    def _merge_duplicate(self, record_id: int, rank: int, sample: Sample) -> None:
        # The record describes its most informative sighting, so eviction ranks it by that.
        if sample.reason.rank > rank:
            self.db.execute(
                "UPDATE samples SET seen = seen + 1, last_seen_at = ?, hotkey = ?, probability = ?, experts = ?, "
                "levels_run = ?, status = ?, reason = ?, reason_rank = ?, cascade_version = ? WHERE id = ?",
                (
                    sample.created_at, sample.hotkey, sample.probability, json.dumps(list(sample.experts)),
                    sample.levels_run, sample.status, sample.reason.value, sample.reason.rank,
                    sample.cascade_version, record_id,
                ),
            )
        else:
            self.db.execute(
                "UPDATE samples SET seen = seen + 1, last_seen_at = MAX(last_seen_at, ?) WHERE id = ?",
                (sample.created_at, record_id),
            )
        if sample.label is not None:  # a testnet label fills a gap, never overrides an operator's label
            self.db.execute(
                "UPDATE samples SET label = ?, label_source = 'testnet' WHERE id = ? AND label IS NULL",
                (sample.label, record_id),
            )

    def _plan_eviction(self, nbytes: int, labelled: bool, rank: int) -> list[sqlite3.Row] | None:
        """Records to evict so that one more image of `nbytes` fits; None: the new one must go instead."""
        if self.max_bytes is not None and nbytes > self.max_bytes:
            return None
        need_items = 0 if self.max_items is None else self.items + 1 - self.max_items
        need_bytes = 0 if self.max_bytes is None else self.total_bytes + nbytes - self.max_bytes
        victims: list[sqlite3.Row] = []
        if need_items <= 0 and need_bytes <= 0:
            return victims
        # Closed on every way out: an unfinished SELECT must not linger into the COMMIT.
        with contextlib.closing(self.eviction_order()) as rows:
            for row in rows:
                if (bool(row["labelled"]), row["reason_rank"]) > (labelled, rank):
                    return None
                victims.append(row)
                need_items -= 1
                need_bytes -= row["nbytes"]
                if need_items <= 0 and need_bytes <= 0:
                    return victims
        return None

    def _write_image(self, path: Path, data: bytes) -> None:
        shard = path.parent
        if shard.name not in self._shards:
            if not shard.is_dir():
                shard.mkdir(exist_ok=True)
                _fsync_dir(self.images_dir)  # the new folder's entry must be durable before files in it
            self._shards.add(shard.name)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{path.stem[:16]}.", suffix=".part", dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(shard)

    def delete(self, record_ids: Sequence[int]) -> int:
        """Drop records and their images (operator pruning); returns how many existed."""
        self._require_writer()
        rows = [
            row for record_id in record_ids
            for row in self.db.execute("SELECT id, image_hash, ext, nbytes FROM samples WHERE id = ?", (record_id,))
        ]
        if rows:
            with self.transaction():
                self.db.executemany("DELETE FROM samples WHERE id = ?", [(row["id"],) for row in rows])
            self._unlink_images(rows)
            self.items -= len(rows)
            self.total_bytes -= sum(row["nbytes"] for row in rows)
        return len(rows)

    def eviction_order(self) -> Generator[sqlite3.Row, None, None]:
        """(id, image_hash, ext, nbytes, labelled, reason_rank) rows, first to go first."""
        with contextlib.closing(self.db.execute(_EVICTION_ORDER)) as cursor:
            yield from cursor

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"store {self.directory} is closed")
        return self._db

    # ----- reading --------------------------------------------------------------------------------

    def image_path(self, image_hash: str, ext: str) -> Path:
        return self.images_dir / image_hash[:2] / f"{image_hash}.{ext}"

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> ALStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- helpers --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        # After a failed COMMIT the transaction may or may not still be open.
        with contextlib.suppress(sqlite3.Error):
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def _unlink_images(self, victims: Sequence[sqlite3.Row]) -> None:
        # After the commit: a crash before these unlinks leaves files that recovery removes.
        for victim in victims:
            self.image_path(victim["image_hash"], victim["ext"]).unlink(missing_ok=True)

    def _require_writer(self) -> None:
        if not self.writer:
            raise StoreError(f"store {self.directory} was opened read-only; this needs the writer (its lock)")
