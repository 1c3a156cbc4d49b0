"""Teacher labels in the active-learning store (sn72_tools/al/teacher.py, schema 2 of cascade/observers/al_store.py):
stored apart from a person's labels, never over one, never read as one; the migration of a store of schema 1; and
`sn72-al teach` through the real engine with a small CNN built here.

A real store (SQLite and image files). tests/data/al_store_v1 was written by the code of schema 1 (al_store.py at
1ad7256, before teacher labels): record 1 unlabelled, 2 labelled 1 by testnet, 3 labelled 0 by a person.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from cascade.observers.al_store import SCHEMA_VERSION, ALStore
from sn72_tools.al import export as al_export
from sn72_tools.al import teacher
from sn72_tools.al.cli import main
from sn72_tools.evaluation.datasets import open_source
from tests.integration.test_al_label import make_store

V1_STORE = Path(__file__).resolve().parents[1] / "data" / "al_store_v1"


def v1_store(tmp_path: Path) -> Path:
    folder = tmp_path / "v1"
    shutil.copytree(V1_STORE, folder)
    return folder


def user_version(folder: Path) -> int:
    db = sqlite3.connect(folder / "index.sqlite")
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def hashes(folder: Path) -> dict[int, str]:
    with ALStore(folder, writer=False) as store:
        return {r.id: r.image_hash for r in al_export.iter_records(store)}


def labels_of(folder: Path) -> dict[int, tuple[int | None, str | None]]:
    with ALStore(folder, writer=False) as store:
        return {r.id: (r.label, r.label_source) for r in al_export.iter_records(store)}


def test_a_store_of_schema_1_reads_unchanged_and_the_miner_migrates_it_in_place(tmp_path: Path) -> None:
    folder = v1_store(tmp_path)
    assert user_version(folder) == 1
    before = labels_of(folder)  # a reader of the new code reads it as it is: nothing migrated, no teacher labels
    assert before == {1: (None, None), 2: (1, "testnet"), 3: (0, "manual")}
    with ALStore(folder, writer=False) as store:
        assert not teacher.has_teacher_table(store) and teacher.teacher_labels(store) == []
        assert [r.id for r in teacher.unlabelled_without_teacher(store)] == [1]
    assert user_version(folder) == 1
    with ALStore(folder) as store:  # the miner's open: recovery finds nothing to repair, the schema moves to 2
        assert store.last_recovery == {"tmp_removed": 0, "records_without_image": 0, "images_without_record": 0}
        assert store.items == 3 and teacher.has_teacher_table(store)
    assert user_version(folder) == SCHEMA_VERSION == 2
    assert labels_of(folder) == before
    with ALStore(folder) as store:  # opening again changes nothing
        assert store.items == 3
    assert user_version(folder) == 2


def test_teaching_migrates_a_store_of_schema_1_beside_a_running_miner(tmp_path: Path) -> None:
    folder = v1_store(tmp_path)
    ids = hashes(folder)
    with ALStore(folder, writer=False) as store:  # `sn72-al teach` opens the store as a reader
        written = teacher.put_teacher_labels(store, [(ids[1], 1, 0.99)], "teacher:top@abc", 0.95, "v1", now=5.0)
        assert written == {ids[1]}
        (label,) = teacher.teacher_labels(store)
    assert (label.record_id, label.label, label.source, label.confidence) == (1, 1, "teacher:top@abc", 0.99)
    assert user_version(folder) == 2
    assert labels_of(folder)[1] == (None, None)  # the human column is untouched


def test_a_teacher_label_never_overwrites_a_human_label_and_a_later_human_label_wins(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "al"
    ids = make_store(folder, 4)
    with ALStore(folder, writer=False) as store:
        al_export.apply_labels(store, [(ids[0], 0)])  # a person said 0
        by_id = {r.id: r.image_hash for r in al_export.iter_records(store)}
        written = teacher.put_teacher_labels(store, [(by_id[i], 1, 0.97) for i in ids[:3]], "teacher:top@abc", 0.95,
                                             "v1")
        assert written == {by_id[ids[1]], by_id[ids[2]]}  # not over the person's 0
        assert [t.record_id for t in teacher.teacher_labels(store)] == ids[1:3]
        assert [r.id for r in teacher.unlabelled_without_teacher(store)] == [ids[3]]
        # Never shown as a person's: the label column, exports and the eval tool's reader see only the human one.
        assert {r.id: r.label for r in al_export.iter_records(store)} == {ids[0]: 0, ids[1]: None, ids[2]: None,
                                                                         ids[3]: None}
        assert al_export.summary(store)["labels"] == {"0": 1, "1": 0, "unlabelled": 3}
        al_export.apply_labels(store, [(ids[1], 0)])  # a person disagrees later: the person wins
        assert [t.record_id for t in teacher.teacher_labels(store)] == [ids[2]]
        assert teacher.teacher_counts(store) == {"teacher:top@abc": {"0": 0, "1": 1}}
    source = open_source(folder)
    assert sorted(item.label for item in source.items()) == [0, 0] and source.size == 2
    assert main(["stats", "--store", str(folder)]) == 0  # the human counts, and the teacher's on a line of its own
    out = capsys.readouterr().out
    assert "labels     0=2, 1=0, unlabelled=2" in out and "teacher    teacher:top@abc: 0=0, 1=1" in out
    assert main(["show", str(ids[1]), "--store", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "label            0\n" in out and "teacher_label    1 by teacher:top@abc" in out
    assert "unused: a person labelled it" in out
    report = al_export.export_folder(ALStore(folder, writer=False), tmp_path / "export")
    assert report.by_label == {"0": 2}


def test_an_evicted_record_takes_its_teacher_label_with_it(tmp_path: Path) -> None:
    folder = tmp_path / "al"
    ids = make_store(folder, 2)
    with ALStore(folder, writer=False) as store:
        by_id = {r.id: r.image_hash for r in al_export.iter_records(store)}
        teacher.put_teacher_labels(store, [(by_id[i], 0, 0.01) for i in ids], "teacher:top@abc", 0.95, "v1")
    with ALStore(folder) as store:
        assert store.delete([ids[0]]) == 1
        left = store.db.execute("SELECT image_hash FROM teacher_labels").fetchall()
    assert [row[0] for row in left] == [by_id[ids[1]]]


def test_decide_labels_only_beyond_the_threshold_on_either_side() -> None:
    assert [teacher.decide(p, 0.95) for p in (0.95, 0.951, 0.5, 0.0501, 0.05, 0.0)] == [1, 1, None, None, 0, 0]


@pytest.fixture(scope="module")
def cnn_cascade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sn72_lab.tiny_models import build_small_cnn

    root = tmp_path_factory.mktemp("teach")
    model = build_small_cnn(root / "small-cnn", seed=3)
    levels = [{"name": name, "exit_margin": 0.5, "experts": [
        {"name": name, "backend": "hf_classifier", "model": str(model), "device": "cpu", "max_batch": 8,
         "warmup_batches": 1}]} for name in ("fast", "top")]
    path = root / "cascade.yaml"
    path.write_text(yaml.safe_dump({"version": "teach-test", "levels": levels}, sort_keys=False))
    return path


@pytest.mark.slow
def test_teach_runs_the_unlabelled_records_through_the_engine_and_writes_only_confident_answers(
        tmp_path: Path, cnn_cascade: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "al"
    ids = make_store(folder, 6)
    with ALStore(folder, writer=False) as store:
        al_export.apply_labels(store, [(ids[0], 1)])
    common = ["--store", str(folder), "--cascade", str(cnn_cascade), "--cache", str(tmp_path / "cache"),
              "--no-progress"]
    # A random CNN answers near its own constant: any threshold just above 0.5 labels most, one of 1 labels none.
    assert main(["teach", *common, "--min-confidence", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "asked 5 unlabelled records: labelled 1: 0, labelled 0: 0, left unsure: 5" in out
    assert main(["teach", *common, "--level", "fast", "--min-confidence", "0.5000001", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "teacher teacher:fast@" in out and "asked 3 unlabelled records" in out
    with ALStore(folder, writer=False) as store:
        taught = teacher.teacher_labels(store)
        assert labels_of(folder)[ids[0]] == (1, "manual")
    assert [t.record_id for t in taught] == ids[1:4]  # oldest first, --limit honoured, the labelled one not asked
    for label in taught:
        assert label.source.startswith("teacher:fast@")
        assert label.label == (1 if label.probability >= 0.5000001 else 0) and label.confidence >= 0.5000001


def test_teach_refuses_an_unknown_level_and_a_threshold_out_of_range(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "al"
    make_store(folder, 1)
    cascade = tmp_path / "cascade.yaml"  # refused before any model loads: a hub id that is never fetched
    cascade.write_text(yaml.safe_dump({"version": "t", "levels": [
        {"name": name, "experts": [{"name": name, "backend": "hf_classifier", "model": "example/none"}]}
        for name in ("fast", "top")]}))
    common = ["teach", "--store", str(folder), "--cascade", str(cascade), "--cache", str(tmp_path / "c")]
    assert main([*common, "--level", "nope"]) == 2
    assert "no level 'nope'; its levels: fast, top" in capsys.readouterr().err
    assert main([*common, "--min-confidence", "0.4"]) == 2
    assert "--min-confidence must lie in (0.5, 1]" in capsys.readouterr().err
    assert main([*common, "--limit", "0"]) == 2


def test_unteach_drops_one_sources_teacher_labels_and_their_records_are_asked_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad `teach` run is undone by its source: its labels go, another source's stay, a person's label is another
    column and stays, and the records it had labelled are among those the next `teach` asks about."""
    folder = tmp_path / "al"
    ids = make_store(folder, 4)
    with ALStore(folder, writer=False) as store:
        by_id = {r.id: r.image_hash for r in al_export.iter_records(store)}
        teacher.put_teacher_labels(store, [(by_id[ids[0]], 1, 0.99), (by_id[ids[1]], 0, 0.02)], "teacher:bad@aaa",
                                   0.6, "v1")
        teacher.put_teacher_labels(store, [(by_id[ids[2]], 1, 0.98)], "teacher:good@bbb", 0.95, "v1")
        al_export.apply_labels(store, [(ids[1], 1)])  # a person, after the bad teacher
    assert main(["unteach", "--store", str(folder)]) == 2  # neither sources nor --all
    assert "name the teacher sources" in capsys.readouterr().err
    assert main(["unteach", "--store", str(folder), "teacher:nope@000"]) == 2
    err = capsys.readouterr().err
    assert "no teacher labels from teacher:nope@000" in err and "teacher:bad@aaa, teacher:good@bbb" in err
    assert main(["unteach", "--store", str(folder), "teacher:bad@aaa", "--dry-run"]) == 0
    assert "would drop 2 teacher labels of teacher:bad@aaa" in capsys.readouterr().out
    with ALStore(folder, writer=False) as store:
        assert teacher.teacher_sources(store) == {"teacher:bad@aaa": 2, "teacher:good@bbb": 1}  # a dry run
    assert main(["unteach", "--store", str(folder), "teacher:bad@aaa"]) == 0
    out = capsys.readouterr().out
    assert "dropped 2 teacher labels of teacher:bad@aaa" in out and "1 teacher labels left" in out
    with ALStore(folder, writer=False) as store:
        assert teacher.teacher_counts(store) == {"teacher:good@bbb": {"0": 0, "1": 1}}
        assert [r.id for r in teacher.unlabelled_without_teacher(store)] == [ids[0], ids[3]]
        assert {r.id: r.label for r in al_export.iter_records(store)}[ids[1]] == 1  # the person's label stays
    assert main(["unteach", "--store", str(folder), "--all"]) == 0
    with ALStore(folder, writer=False) as store:
        assert teacher.teacher_sources(store) == {}
