"""Every labelled-set reader the eval has, on real files: folders, CSV, parquet, save_to_disk, the AL store."""

from __future__ import annotations

import io
from pathlib import Path

import datasets as hf
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cascade.observers.al_store import ALStore, Reason, Sample
from sn72_tools.evaluation.datasets import EvalError, open_source
from sn72_tools.evaluation.synthetic import make_labelled_folder


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (seed * 37 % 256, 90, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def read_all(source) -> list[tuple[str, int, bytes]]:
    return [(item.name, item.label, item.read()) for item in source.items()]


def test_image_folders_in_both_layouts(tmp_path):
    make_labelled_folder(tmp_path / "al-export", 6)
    (tmp_path / "al-export" / "unlabelled").mkdir()
    source = open_source(tmp_path / "al-export")
    items = read_all(source)
    assert source.kind == "folder" and source.size == 6 and [label for _, label, _ in items] == [0, 0, 0, 1, 1, 1]
    assert items[0][0] == "0/00000.jpg" and items[0][2] == (tmp_path / "al-export/0/00000.jpg").read_bytes()
    assert source.notes == ["subfolders ignored (no label): ['unlabelled']"]
    for name, label in (("None", 0), ("Roadwork", 1)):
        (tmp_path / "named" / name).mkdir(parents=True)
        (tmp_path / "named" / name / "x.png").write_bytes(jpeg(label))
    assert [(n, label) for n, label, _ in read_all(open_source(tmp_path / "named"))] == [("None/x.png", 0),
                                                                                         ("Roadwork/x.png", 1)]
    (tmp_path / "other" / "cats").mkdir(parents=True)
    with pytest.raises(EvalError, match=r"expected subfolders 0/ and 1/ or none/ and roadwork/, found \['cats'\]"):
        open_source(tmp_path / "other")


def test_an_empty_set_and_a_missing_path_are_clear_errors(tmp_path):
    (tmp_path / "empty" / "0").mkdir(parents=True)
    (tmp_path / "empty" / "1").mkdir()
    with pytest.raises(EvalError, match="no labelled images in it"):
        open_source(tmp_path / "empty")
    with pytest.raises(EvalError, match="no such file or folder"):
        open_source(tmp_path / "nothing-here")
    (tmp_path / "x.txt").write_text("?")
    with pytest.raises(EvalError, match="name it with --format"):
        open_source(tmp_path / "x.txt")


def test_csv_paths_and_labels(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg(i))
    good = tmp_path / "set.csv"
    good.write_text("path,label\nimg/0.jpg,0\nimg/1.jpg,roadwork\nimg/2.jpg,1\n")
    assert [(n, label, data) for n, label, data in read_all(open_source(good))] == [
        ("img/0.jpg", 0, jpeg(0)), ("img/1.jpg", 1, jpeg(1)), ("img/2.jpg", 1, jpeg(2))]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nimg/0.jpg,0\nimg/1.jpg,maybe\n")
    with pytest.raises(EvalError, match=r"bad\.csv:3: label 'maybe' is not 0/1"):
        open_source(bad)
    headless = tmp_path / "headless.csv"
    headless.write_text("img/0.jpg,0\n")
    with pytest.raises(EvalError, match="the header needs columns path,label"):
        open_source(headless)


def test_parquet_with_image_structs_or_bytes(tmp_path):
    (tmp_path / "b.jpg").write_bytes(jpeg(2))
    structs = pa.table({"image": [{"bytes": jpeg(1), "path": "a.jpg"}, {"bytes": None, "path": "b.jpg"}],
                        "label": [1, 0]})
    pq.write_table(structs, tmp_path / "s.parquet")
    assert read_all(open_source(tmp_path / "s.parquet")) == [("row 0", 1, jpeg(1)), ("row 1", 0, jpeg(2))]
    pq.write_table(pa.table({"png": [jpeg(3)], "y": [0]}), tmp_path / "b.parquet")
    assert read_all(open_source(tmp_path / "b.parquet", image_column="png", label_column="y")) == [
        ("row 0", 0, jpeg(3))]
    with pytest.raises(EvalError, match=r"no column 'image'; columns are \['png', 'y'\]"):
        open_source(tmp_path / "b.parquet")
    pq.write_table(pa.table({"image": [jpeg(3)], "label": [7]}), tmp_path / "seven.parquet")
    with pytest.raises(EvalError, match="row 0: label 7 is not 0/1"):
        open_source(tmp_path / "seven.parquet")


def test_a_save_to_disk_dataset_with_an_image_feature_and_class_names(tmp_path):
    files = []
    for i in range(4):
        files.append(str(tmp_path / f"{i}.jpg"))
        Path(files[-1]).write_bytes(jpeg(i))
    # Class names in the other order than 0/1: labels are read by name.
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=["Roadwork", "None"])})
    train = hf.Dataset.from_dict({"image": files[:2], "label": [0, 1]}, features=features)
    test = hf.Dataset.from_dict({"image": files[2:], "label": [1, 0]}, features=features)
    hf.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "roadwork"))
    source = open_source(tmp_path / "roadwork")
    assert source.kind == "hf" and read_all(source) == [("row 0", 0, jpeg(2)), ("row 1", 1, jpeg(3))]
    assert [label for _, label, _ in read_all(open_source(tmp_path / "roadwork", split="train"))] == [1, 0]
    with pytest.raises(EvalError, match=r"choose a split with --split; it holds \['train', 'test'\]"):
        open_source(tmp_path / "roadwork", split="validation")
    plain = hf.Dataset.from_dict({"image": [jpeg(5)], "label": [1]})
    plain.save_to_disk(str(tmp_path / "bytes"))
    assert read_all(open_source(tmp_path / "bytes")) == [("row 0", 1, jpeg(5))]


def test_the_active_learning_store_is_read_directly(tmp_path):
    with ALStore(tmp_path / "al") as store:
        for i, label in enumerate([1, None, 0, 1]):
            store.add(Sample(image=jpeg(i), reason=Reason.LABELLED if label is not None else Reason.UNCERTAIN,
                             created_at=1000.0 + i, label=label, cascade_version="v1"))
    source = open_source(tmp_path / "al")
    items = read_all(source)
    assert source.kind == "al" and [(label, data) for _, label, data in items] == [(1, jpeg(0)), (0, jpeg(2)),
                                                                                  (1, jpeg(3))]
    assert items[0][0].startswith("al record 1 (")
    assert source.notes == ["1 unlabelled records left out (label them with sn72-al label)"]
