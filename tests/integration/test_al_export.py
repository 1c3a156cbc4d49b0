"""Active-learning exports and operator commands: parquet and image-folder round trips, labels, prune."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from cascade.observers.al_store import ALStore, Reason, Sample
from sn72_tools.al import export as al_export
from sn72_tools.al.cli import main

ROOT = Path(__file__).resolve().parents[2]


def jpeg(i: int) -> bytes:
    """A tiny JPEG, different for every i < 65536: pixel k is white when bit k of i is set."""
    image = Image.new("RGB", (8, 8))
    for k in range(16):
        image.putpixel((k % 8, k // 8), (255, 255, 255) if (i >> k) & 1 else (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def make_store(directory: Path, labels: list[int | None], *, at: float = 1000.0) -> dict[int, tuple[bytes, int | None]]:
    """A store with one record per label given; returns id -> (image bytes, label)."""
    made = {}
    with ALStore(directory) as store:
        for i, label in enumerate(labels):
            data = jpeg(i)
            sample = Sample(image=data, reason=Reason.LABELLED if label is not None else Reason.UNCERTAIN,
                            created_at=at + i, label=label, hotkey="5Caller", width=8, height=8, status="deadline",
                            probability=0.4, experts=({"expert": "e", "level": 0, "probability": 0.4, "logit": -0.4,
                                                       "weight": 1.0},))
            record_id = store.add(sample).record_id
            assert record_id is not None
            made[record_id] = (data, label)
    return made


def test_parquet_round_trip_has_the_images_and_labels(tmp_path: Path) -> None:
    made = make_store(tmp_path / "al", [0, 1, None, 1, None, 0])
    progress: list[tuple[int, int]] = []
    with ALStore(tmp_path / "al", writer=False) as store:
        report = al_export.export_parquet(store, tmp_path / "out.parquet", progress=lambda *p: progress.append(p),
                                          rows_per_group=2)
    assert report.written == 4 and report.by_label == {"0": 2, "1": 2} and not report.missing
    assert progress[-1] == (4, 4)
    table = pq.read_table(tmp_path / "out.parquet")
    assert str(table.schema.field("image").type) == "struct<bytes: binary, path: string>"
    rows = table.to_pylist()
    assert {row["id"] for row in rows} == {i for i, (_, label) in made.items() if label is not None}
    for row in rows:
        data, label = made[row["id"]]
        assert row["image"]["bytes"] == data and row["label"] == label
        assert row["image"]["path"] == f"{row['image_hash']}.jpg" and row["status"] == "deadline"
        assert json.loads(row["experts"])[0]["expert"] == "e"
    hf = json.loads(table.schema.metadata[b"huggingface"])
    assert hf["info"]["features"]["image"] == {"_type": "Image"}
    assert not list(tmp_path.glob(".*part"))  # written under a temporary name, then renamed


def test_parquet_can_include_unlabelled_rows(tmp_path: Path) -> None:
    make_store(tmp_path / "al", [1, None])
    with ALStore(tmp_path / "al", writer=False) as store:
        al_export.export_parquet(store, tmp_path / "all.parquet", include_unlabelled=True)
        with pytest.raises(al_export.ExportError, match="already exists"):
            al_export.export_parquet(store, tmp_path / "all.parquet")
    assert pq.read_table(tmp_path / "all.parquet").column("label").to_pylist() == [1, None]


def test_parquet_loads_with_hf_datasets_image_feature(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    made = make_store(tmp_path / "al", [0, 1])
    with ALStore(tmp_path / "al", writer=False) as store:
        al_export.export_parquet(store, tmp_path / "out.parquet")
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "out.parquet"), split="train")
    assert isinstance(loaded.features["image"], datasets.Image)
    assert loaded[0]["image"].size == (8, 8)
    assert sorted(loaded["label"]) == sorted(label for _, label in made.values() if label is not None)


def test_image_folder_export_puts_files_under_their_labels(tmp_path: Path) -> None:
    made = make_store(tmp_path / "al", [0, 1, None, 1])
    out = tmp_path / "out"
    with ALStore(tmp_path / "al", writer=False) as store:
        report = al_export.export_folder(store, out)
        with pytest.raises(al_export.ExportError, match="already exists"):
            al_export.export_folder(store, out)
    assert report.by_label == {"0": 1, "1": 2}
    assert sorted(p.parent.name for p in out.glob("*/*.jpg")) == ["0", "1", "1"]
    with (out / "metadata.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for row in rows:
        data, label = made[int(row["id"])]
        assert (out / row["file_name"]).read_bytes() == data
        assert row["file_name"].split("/")[0] == row["label"] == str(label)


def test_export_skips_images_evicted_meanwhile(tmp_path: Path) -> None:
    made = make_store(tmp_path / "al", [0, 1])
    with ALStore(tmp_path / "al", writer=False) as store:
        gone = next(iter(made))
        record = al_export.get_record(store, gone)
        assert record is not None
        record.path.unlink()
        report = al_export.export_folder(store, tmp_path / "out")
    assert report.missing == [gone] and report.written == 1


def test_label_csv_with_bad_rows_applies_nothing_and_names_the_lines(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    made = make_store(tmp_path / "al", [None, None, None])
    first, second, third = sorted(made)
    with ALStore(tmp_path / "al", writer=False) as store:
        third_hash = al_export.get_record(store, third).image_hash  # type: ignore[union-attr]
    sheet = tmp_path / "labels.csv"
    sheet.write_text(f"image_hash_or_id,label\n{first},1\n\n{second},yes\nnope,0\n{third_hash},0\n{first},0\n")
    assert main(["label", "--csv", str(sheet), "--store", str(tmp_path / "al")]) == 2
    err = capsys.readouterr().err
    assert "line 4: label must be 0 or 1" in err and "line 5: no record" in err and "line 7: record" in err
    with ALStore(tmp_path / "al", writer=False) as store:
        assert al_export.count_records(store, labelled=True) == 0  # nothing applied
    assert main(["label", "--csv", str(sheet), "--skip-bad", "--store", str(tmp_path / "al")]) == 0
    assert main(["label", str(second), "1", "--store", str(tmp_path / "al")]) == 0
    with ALStore(tmp_path / "al", writer=False) as store:
        labels = {r.id: r.label for r in al_export.iter_records(store)}
    assert labels == {first: 1, second: 1, third: 0}


def test_cli_reports_a_missing_store_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--store", str(tmp_path / "nowhere")]) == 2
    assert "no active-learning store" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_cli_list_show_stats_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = make_store(tmp_path / "al", [1, None, 0])
    store_arg = ["--store", str(tmp_path / "al")]
    assert main(["list", "--unlabelled", *store_arg]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and "uncertain" in listed[1]
    assert main(["show", str(next(iter(made))), *store_arg]) == 0
    assert "label            1" in capsys.readouterr().out
    assert main(["stats", *store_arg]) == 0
    assert "integrity  ok" in capsys.readouterr().out
    assert main(["export", "parquet", str(tmp_path / "x.parquet"), *store_arg]) == 0
    captured = capsys.readouterr()
    assert "exported 2 images" in captured.out and "export parquet: 2/2" in captured.err


def test_prune_by_age_and_size(tmp_path: Path) -> None:
    made = make_store(tmp_path / "al", [None, None, 1, None, None], at=1000.0)
    ids = sorted(made)
    with ALStore(tmp_path / "al") as store:
        # records were seen at 1000..1004; "older than 2.5 s" at 1004 drops the unlabelled at 1000 and 1001
        assert al_export.prune(store, older_than_s=2.5, now_s=1004.0, dry_run=True) == ids[:2]
        assert store.items == 5
        assert al_export.prune(store, older_than_s=2.5, now_s=1004.0) == ids[:2]
        assert al_export.prune(store, max_items=2) == [ids[3]]  # the labelled one goes last
        assert store.items == 2 and len(list(store.images_dir.glob("*/*"))) == 2


def test_python_m_sn72_tools_al_cli_is_the_same_cli(tmp_path: Path) -> None:
    make_store(tmp_path / "al", [1])
    done = subprocess.run([sys.executable, "-m", "sn72_tools.al.cli", "stats", "--store", str(tmp_path / "al")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "records    1" in done.stdout


def test_an_empty_selection_is_refused_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "al", [None, None])  # two kept samples, none labelled yet
    store_arg = ["--store", str(tmp_path / "al")]
    for kind, out in (("parquet", tmp_path / "x.parquet"), ("folder", tmp_path / "folder")):
        assert main(["export", kind, str(out), *store_arg]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: nothing to export: no labelled records (2 unlabelled")
        assert "sn72-al label" in err and "--include-unlabelled" in err
        assert not out.exists() and not list(tmp_path.glob(".*.part"))
    assert main(["export", "parquet", str(tmp_path / "all.parquet"), "--include-unlabelled", *store_arg]) == 0
