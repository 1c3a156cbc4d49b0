"""Active-learning store and observer: bounds, eviction, dedupe, recovery, failures that never reach requests."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from PIL import Image

from cascade.config import ActiveLearningConfig
from cascade.observers.active_learning import ActiveLearningObserver
from cascade.observers.al_store import AddOutcome, AddResult, ALStore, Reason, Sample, StoreBusy, StoreMissing
from cascade.observers.base import Finished
from cascade.request import Job, Result, Status
from sn72_tools.al.export import apply_labels, get_record


def jpeg(i: int, side: int = 8) -> bytes:
    """A tiny JPEG, different for every i < 65536: pixel k is white when bit k of i is set."""
    image = Image.new("RGB", (side, side))
    for k in range(16):
        image.putpixel((k % side, k // side), (255, 255, 255) if (i >> k) & 1 else (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def noise_jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "JPEG")
    return buffer.getvalue()


def make_sample(i: int, reason: Reason = Reason.UNCERTAIN, *, at: float = 0.0, label: int | None = None,
                image: bytes | None = None) -> Sample:
    return Sample(image=image if image is not None else jpeg(i), reason=reason, created_at=at or float(i),
                  hotkey="5Caller", width=8, height=8, probability=0.5, label=label, status="confident",
                  experts=({"expert": "e", "level": 0, "probability": 0.5, "logit": 0.0, "weight": 1.0},))


def make_finished(i: int, p: float = 0.5, label: int = -1) -> Finished:
    job = Job(payload="", hotkey="5Caller", testnet_label=label)
    result = Result(request_id=job.request_id, probability=p, status=Status.EXHAUSTED, levels_run=2)
    data = jpeg(i)
    return Finished(job, result, hashlib.sha256(data).hexdigest(), data, (8, 8), "v1")


def make_observer(directory: Path, **overrides: Any) -> tuple[ActiveLearningObserver, ActiveLearningConfig]:
    fields: dict[str, Any] = {"enabled": True, "directory": directory, "sample_rate": 0.0, "queue_size": 8}
    store_factory = overrides.pop("store_factory", None)
    fields.update(overrides)
    config = ActiveLearningConfig(**fields)
    return ActiveLearningObserver(config, store_factory=store_factory), config


def ids(store: ALStore) -> set[int]:
    return {row[0] for row in store.db.execute("SELECT id FROM samples")}


def files(store: ALStore) -> set[str]:
    return {path.name for path in store.images_dir.glob("*/*")}


# ----- the store -----------------------------------------------------------------------------------


def test_added_record_and_image_survive_reopening(tmp_path: Path) -> None:
    with ALStore(tmp_path / "al") as store:
        result = store.add(make_sample(1, label=1))
        assert result.outcome is AddOutcome.ADDED and result.record_id is not None
        record = get_record(store, result.record_id)
    with ALStore(tmp_path / "al") as store:
        again = get_record(store, result.record_id)
        assert again == record and again is not None
        assert again.path.read_bytes() == jpeg(1) and again.label == 1 and again.label_source == "testnet"
        assert again.image_hash == hashlib.sha256(jpeg(1)).hexdigest() and again.ext == "jpg"
        assert store.integrity_check() == ["ok"]


def test_duplicate_image_is_stored_once_and_counted(tmp_path: Path) -> None:
    with ALStore(tmp_path / "al") as store:
        first = store.add(make_sample(1, Reason.SAMPLE, at=10.0))
        second = store.add(make_sample(1, Reason.DEADLINE, at=20.0, label=0))
        third = store.add(make_sample(1, Reason.UNCERTAIN, at=30.0))
        assert first.outcome is AddOutcome.ADDED
        assert second == third == AddResult(AddOutcome.DUPLICATE, first.record_id)
        assert store.items == 1 and len(files(store)) == 1 and store.total_bytes == len(jpeg(1))
        assert first.record_id is not None
        record = get_record(store, first.record_id)
        assert record is not None
        # the most informative sighting describes the record; a testnet label fills the gap
        assert (record.seen, record.reason, record.label, record.last_seen_at) == (3, "deadline", 0, 30.0)


def test_item_cap_evicts_least_informative_then_oldest(tmp_path: Path) -> None:
    with ALStore(tmp_path / "al", max_items=3) as store:
        old_sample = store.add(make_sample(1, Reason.SAMPLE, at=1.0)).record_id
        uncertain = store.add(make_sample(2, Reason.UNCERTAIN, at=2.0)).record_id
        new_sample = store.add(make_sample(3, Reason.SAMPLE, at=3.0)).record_id
        result = store.add(make_sample(4, Reason.DEADLINE, at=4.0))
        assert result.evicted == (old_sample,)
        result = store.add(make_sample(5, Reason.UNCERTAIN, at=5.0))
        assert result.evicted == (new_sample,)
        result = store.add(make_sample(6, Reason.UNCERTAIN, at=6.0))
        assert result.evicted == (uncertain,)
        assert store.items == 3 and len(files(store)) == 3


def test_labelled_records_go_last_and_are_never_displaced_by_less(tmp_path: Path) -> None:
    with ALStore(tmp_path / "al", max_items=2) as store:
        sampled = store.add(make_sample(1, Reason.SAMPLE, at=1.0)).record_id
        deadline = store.add(make_sample(2, Reason.DEADLINE, at=2.0)).record_id
        assert sampled is not None and deadline is not None
        apply_labels(store, [(sampled, 1)])  # an operator's label protects even a random sample
        result = store.add(make_sample(3, Reason.DEADLINE, at=3.0))
        assert result.evicted == (deadline,)
        rejected = store.add(make_sample(4, Reason.UNCERTAIN, at=4.0))
        assert rejected == AddResult(AddOutcome.REJECTED, None)
        assert store.items == 2 and sampled in ids(store) and len(files(store)) == 2


def test_byte_cap_evicts_until_the_new_image_fits(tmp_path: Path) -> None:
    images = [jpeg(i, side=8 + 8 * (i % 3)) for i in range(12)]
    cap = sum(len(image) for image in images[:3])
    with ALStore(tmp_path / "al", max_bytes=cap) as store:
        for i, image in enumerate(images):
            result = store.add(make_sample(i, Reason.UNCERTAIN, image=image))
            assert result.outcome is AddOutcome.ADDED
            assert store.total_bytes <= cap
            assert store.total_bytes == sum(p.stat().st_size for p in store.images_dir.glob("*/*"))
        too_big = store.add(make_sample(99, Reason.LABELLED, image=noise_jpeg(64)))
        assert too_big.outcome is AddOutcome.REJECTED
    with ALStore(tmp_path / "al") as store:  # totals are recomputed from the records at open
        assert store.total_bytes <= cap and store.items == len(files(store))


def test_recovery_removes_orphans_and_records_without_image(tmp_path: Path) -> None:
    with ALStore(tmp_path / "al") as store:
        kept = store.add(make_sample(1)).record_id
        lost = store.add(make_sample(2)).record_id
        assert lost is not None
        lost_record = get_record(store, lost)
        assert lost_record is not None
        tmp_file = store.tmp_dir / "abc.part"
        orphan = store.image_path("ff" * 32, "jpg")
    lost_record.path.unlink()  # as if the file system lost it
    tmp_file.write_bytes(b"half an image")  # a write killed mid-way
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(jpeg(3))  # written, but the commit never happened
    with ALStore(tmp_path / "al") as store:
        assert store.last_recovery == {"tmp_removed": 1, "records_without_image": 1, "images_without_record": 1}
        assert ids(store) == {kept} and not orphan.exists() and not any(store.tmp_dir.iterdir())
        assert store.integrity_check() == ["ok"]


def test_one_writer_at_a_time_and_readers_never_create_a_store(tmp_path: Path) -> None:
    with ALStore(tmp_path / "al"), pytest.raises(StoreBusy, match="held by another process"):
        ALStore(tmp_path / "al")
    with pytest.raises(StoreMissing):
        ALStore(tmp_path / "nothing", writer=False)
    assert not (tmp_path / "nothing").exists()


def test_failed_image_write_leaves_no_trace_and_the_store_stays_usable(tmp_path: Path) -> None:
    with ALStore(tmp_path / "al") as store:
        store.add(make_sample(1))
        shutil.rmtree(store.tmp_dir)
        store.tmp_dir.write_text("not a folder")  # every temporary image now fails, also as root
        with pytest.raises(OSError):
            store.add(make_sample(2))
        assert store.items == 1 and len(files(store)) == 1
        store.tmp_dir.unlink()
        store.tmp_dir.mkdir()
        assert store.add(make_sample(2)).outcome is AddOutcome.ADDED


# ----- the observer --------------------------------------------------------------------------------


def test_observer_writes_kept_requests_and_counts(tmp_path: Path) -> None:
    observer, _ = make_observer(tmp_path / "al")
    try:
        observer.on_finished(make_finished(1, p=0.5))
        observer.on_finished(make_finished(1, p=0.5))  # same image again
        observer.on_finished(make_finished(2, p=0.99))  # confident: not kept
        observer.on_finished(make_finished(3, p=0.99, label=1))
        assert observer.flush(10.0)
        stats = observer.stats()
        assert stats.kept_by_reason["uncertain"] == 2 and stats.kept_by_reason["labelled"] == 1
        assert (stats.written, stats.duplicates, stats.dropped_write_error) == (2, 1, 0)
        assert stats.store_open
    finally:
        observer.close()
    with ALStore(tmp_path / "al", writer=False) as store:
        assert store.items == 2


def test_unwritable_store_folder_drops_and_warns_once(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="WARNING")
    # Under a regular file nothing can be created, not even by root.
    observer, _ = make_observer(blocker / "al", warn_interval_s=3600.0, reopen_interval_s=3600.0)
    try:
        for i in range(5):
            observer.on_finished(make_finished(i, p=0.5))  # must not raise
        assert observer.flush(10.0)
        stats = observer.stats()
        assert stats.dropped_write_error == 5 and stats.written == 0 and not stats.store_open
    finally:
        observer.close()
        logger.remove(sink)
    assert len([m for m in messages if "cannot open store" in m]) == 1


class FailingSink:
    """A store whose disk is full."""

    def add(self, sample: Sample) -> AddResult:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        pass


def test_disk_full_drops_are_counted_and_warnings_rate_limited(tmp_path: Path) -> None:
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="WARNING")
    observer, _ = make_observer(tmp_path / "al", store_factory=FailingSink, warn_interval_s=3600.0)
    try:
        for i in range(6):
            observer.on_finished(make_finished(i, p=0.5))
        assert observer.flush(10.0)
        assert observer.stats().dropped_write_error == 6
    finally:
        observer.close()
        logger.remove(sink)
    assert len([m for m in messages if "No space left" in m]) == 1


class GatedSink:
    """Each add waits for `release`; `entered` tells the test the writer is stuck inside one."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.added: list[Sample] = []

    def add(self, sample: Sample) -> AddResult:
        self.entered.set()
        assert self.release.wait(30), "test never released the writer"
        self.added.append(sample)
        return AddResult(AddOutcome.ADDED, len(self.added))

    def close(self) -> None:
        pass


def test_slow_writer_never_slows_requests_and_drops_when_the_queue_is_full(tmp_path: Path) -> None:
    gated = GatedSink()
    observer, _ = make_observer(tmp_path / "al", store_factory=lambda: gated, queue_size=3)
    try:
        observer.on_finished(make_finished(0))
        assert gated.entered.wait(10)  # the writer holds sample 0 and is stuck
        durations = []
        for i in range(1, 9):
            start = time.perf_counter()
            observer.on_finished(make_finished(i))
            durations.append(time.perf_counter() - start)
        stats = observer.stats()
        assert stats.queue_depth == 3 and stats.dropped_queue_full == 5
        assert max(durations) < 0.05  # never waited for the writer (generous for a loaded CI box)
        gated.release.set()
        assert observer.flush(10.0)
        stats = observer.stats()
        assert stats.written == 4 and stats.queue_depth == 0 and sum(stats.kept_by_reason.values()) == 4
    finally:
        gated.release.set()
        observer.close()


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    gated = GatedSink()
    observer, _ = make_observer(tmp_path / "al", store_factory=lambda: gated, queue_size=16)
    observer.on_finished(make_finished(0))
    assert gated.entered.wait(10)
    for i in range(1, 5):
        observer.on_finished(make_finished(i))
    gated.release.set()
    observer.close()
    assert len(gated.added) == 5
    observer.on_finished(make_finished(9))  # after close: ignored, never raises
