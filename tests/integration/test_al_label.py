"""`sn72-al label` from what an operator has: image files, labelled folders, CSVs of paths, ids or hashes.

A real store (SQLite and image files) and the real CLI; images are matched by the sha256 of their bytes.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from cascade.observers.al_store import ALStore, Reason, Sample
from sn72_tools.al import export as al_export
from sn72_tools.al.cli import main


def jpeg(i: int) -> bytes:
    """A tiny JPEG, different for every i < 65536."""
    image = Image.new("RGB", (8, 8))
    for k in range(16):
        image.putpixel((k % 8, k // 8), (255, 255, 255) if (i >> k) & 1 else (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def make_store(directory: Path, count: int) -> list[int]:
    """A store holding jpeg(0) .. jpeg(count - 1), unlabelled; their record ids in that order."""
    ids = []
    with ALStore(directory) as store:
        for i in range(count):
            sample = Sample(image=jpeg(i), reason=Reason.UNCERTAIN, created_at=1000.0 + i, hotkey="5Caller",
                            probability=0.5, status="confident")
            record_id = store.add(sample).record_id
            assert record_id is not None
            ids.append(record_id)
    return ids


def labels_of(directory: Path) -> dict[int, tuple[int | None, str | None]]:
    with ALStore(directory, writer=False) as store:
        return {r.id: (r.label, r.label_source) for r in al_export.iter_records(store)}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("layout", [("0", "1"), ("none", "roadwork")])
def test_a_labelled_folder_labels_what_the_store_holds_and_skips_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: tuple[str, str]) -> None:
    ids = make_store(tmp_path / "al", 3)
    folder = tmp_path / "labelled"
    negative, positive = layout
    write(folder / negative / "a.jpg", jpeg(0))
    write(folder / positive / "sub" / "b.jpg", jpeg(1))  # nested, as the eval tool reads them
    for i in range(100, 108):  # never kept by the miner: the normal case for a large labelled set
        write(folder / (positive if i % 2 else negative) / f"other-{i}.jpg", jpeg(i))
    assert main(["label", "--store", str(tmp_path / "al"), "--folder", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "labelled 2 records: 2 changed, 0 already so" in out
    assert "not in the store (evicted, or never kept): 8 images, skipped: " in out and "and 3 more" in out
    assert labels_of(tmp_path / "al") == {ids[0]: (0, "manual"), ids[1]: (1, "manual"), ids[2]: (None, None)}
    # the same folder again: nothing changes, and it says so
    assert main(["label", "--store", str(tmp_path / "al"), "--folder", str(folder)]) == 0
    assert "labelled 2 records: 0 changed, 2 already so" in capsys.readouterr().out


def test_an_eval_csv_with_a_header_is_read_by_the_eval_reader(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ids = make_store(tmp_path / "al", 2)
    write(tmp_path / "set" / "images" / "x.jpg", jpeg(0))
    write(tmp_path / "set" / "images" / "y.jpg", jpeg(1))
    write(tmp_path / "set" / "images" / "z.jpg", jpeg(500))
    sheet = tmp_path / "set" / "labels.csv"
    sheet.write_text("path,label\nimages/x.jpg,roadwork\nimages/y.jpg,none\nimages/z.jpg,1\n")
    assert main(["label", "--store", str(tmp_path / "al"), "--folder", str(sheet)]) == 0
    assert "not in the store (evicted, or never kept): 1 images, skipped: images/z.jpg" in capsys.readouterr().out
    assert labels_of(tmp_path / "al") == {ids[0]: (1, "manual"), ids[1]: (0, "manual")}


def test_one_image_path_as_ref(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = make_store(tmp_path / "al", 2)
    image = write(tmp_path / "look" / "this one.jpg", jpeg(1))
    assert main(["label", str(image), "1", "--store", str(tmp_path / "al")]) == 0
    assert "labelled 1 records: 1 changed" in capsys.readouterr().out
    assert labels_of(tmp_path / "al")[ids[1]] == (1, "manual")
    # an image the store does not hold is reported, not an error
    stranger = write(tmp_path / "look" / "stranger.jpg", jpeg(77))
    assert main(["label", str(stranger), "0", "--store", str(tmp_path / "al")]) == 0
    assert "1 images, skipped: " + str(stranger) in capsys.readouterr().out
    # a path that is no file is malformed input
    assert main(["label", str(tmp_path / "nothing.jpg"), "0", "--store", str(tmp_path / "al")]) == 2
    assert "no readable image file" in capsys.readouterr().err


def test_csv_rows_of_ids_hashes_and_paths_with_unknown_images_skipped(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ids = make_store(tmp_path / "al", 4)
    write(tmp_path / "sheets" / "pics" / "two.jpg", jpeg(2))
    write(tmp_path / "sheets" / "pics" / "gone.jpg", jpeg(900))
    sheet = tmp_path / "sheets" / "labels.csv"
    sheet.write_text("\n".join([
        "image,label",
        f"{ids[0]},1",
        f"{hashlib.sha256(jpeg(1)).hexdigest()},0",
        "pics/two.jpg,1",  # relative to the CSV, not to where the command runs
        "pics/gone.jpg,0",  # an image file the store never kept
        f"{hashlib.sha256(b'evicted long ago').hexdigest()},1",  # a hash the store no longer holds
        "987654,1",  # an id the store no longer holds
    ]) + "\n")
    assert main(["label", "--csv", str(sheet), "--store", str(tmp_path / "al")]) == 0
    captured = capsys.readouterr()
    assert "labelled 3 records: 3 changed" in captured.out and captured.err == ""
    assert "not in the store (evicted, or never kept): 3 images, skipped: pics/gone.jpg" in captured.out
    assert labels_of(tmp_path / "al") == {ids[0]: (1, "manual"), ids[1]: (0, "manual"), ids[2]: (1, "manual"),
                                          ids[3]: (None, None)}


def test_malformed_rows_refuse_the_whole_file_and_each_is_named(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ids = make_store(tmp_path / "al", 3)
    write(tmp_path / "a.jpg", jpeg(0))
    write(tmp_path / "b.jpg", jpeg(1))
    sheet = tmp_path / "labels.csv"
    sheet.write_text(f"a.jpg,1\nb.jpg,2\nmissing.jpg,0\n{ids[2]},1\n{hashlib.sha256(b'x').hexdigest()},0\n")
    store_arg = ["--store", str(tmp_path / "al")]
    assert main(["label", "--csv", str(sheet), *store_arg]) == 2
    err = capsys.readouterr().err
    assert "line 2: label must be 0 or 1, got '2'" in err and "line 3: " in err and "missing.jpg" in err
    assert "no label applied (2 bad rows" in err
    assert all(label is None for label, _ in labels_of(tmp_path / "al").values())
    assert main(["label", "--csv", str(sheet), "--skip-bad", *store_arg]) == 0
    out = capsys.readouterr().out
    assert "labelled 2 records" in out and "1 images, skipped" in out and "skipped 2 bad rows" in out
    assert labels_of(tmp_path / "al") == {ids[0]: (1, "manual"), ids[1]: (None, None), ids[2]: (1, "manual")}


def test_a_folder_set_with_unreadable_or_contradicting_images_names_each(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ids = make_store(tmp_path / "al", 2)
    write(tmp_path / "set" / "p.jpg", jpeg(0))
    write(tmp_path / "set" / "q.jpg", jpeg(0))  # the same picture under another name...
    write(tmp_path / "set" / "r.jpg", jpeg(1))
    sheet = tmp_path / "set" / "labels.csv"
    sheet.write_text("path,label\np.jpg,1\nq.jpg,0\nr.jpg,1\nlost.jpg,0\nalso-lost.jpg,1\n")  # ...labelled otherwise
    store_arg = ["--store", str(tmp_path / "al")]
    assert main(["label", "--folder", str(sheet), *store_arg]) == 2
    err = capsys.readouterr().err
    assert "q.jpg: record" in err and "lost.jpg: cannot read the image" in err and "also-lost.jpg: cannot read" in err
    assert all(label is None for label, _ in labels_of(tmp_path / "al").values())
    assert main(["label", "--folder", str(sheet), "--skip-bad", *store_arg]) == 0
    assert labels_of(tmp_path / "al") == {ids[0]: (1, "manual"), ids[1]: (1, "manual")}


def test_a_label_the_eval_reader_refuses_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "al", 1)
    sheet = tmp_path / "labels.csv"
    sheet.write_text("path,label\na.jpg,maybe\n")
    assert main(["label", "--folder", str(sheet), "--store", str(tmp_path / "al")]) == 2
    err = capsys.readouterr().err
    assert "label 'maybe' is not 0/1" in err and "as `--csv`" in err


def test_exactly_one_input_is_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "al", 1)
    store_arg = ["--store", str(tmp_path / "al")]
    assert main(["label", *store_arg]) == 2
    assert main(["label", "--folder", str(tmp_path), "--csv", str(tmp_path / "x.csv"), *store_arg]) == 2
    assert "give exactly one of" in capsys.readouterr().err


def test_apply_labels_skips_records_evicted_since_they_were_looked_up(tmp_path: Path) -> None:
    ids = make_store(tmp_path / "al", 2)
    with ALStore(tmp_path / "al") as store:
        store.delete([ids[1]])  # what a running miner's eviction does between the lookup and the label
        missing: list[int] = []
        assert al_export.apply_labels(store, [(ids[0], 1), (ids[1], 0)], missing=missing) == 1
        with pytest.raises(KeyError):
            al_export.apply_labels(store, [(ids[1], 0)])
    assert missing == [ids[1]]
