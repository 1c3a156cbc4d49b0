"""sn72-query's inputs and label arithmetic, without a miner: which sets are labelled, how misses are charged,
and how requests are paced."""

from __future__ import annotations

import asyncio
import io
import itertools
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sn72_tools.client import Pacer, synthetic_image
from sn72_tools.evaluation.scoring import mcc
from sn72_tools.query_sets import collect, label_scores


def jpeg(i: int) -> bytes:
    buffer = io.BytesIO()
    synthetic_image(i, (32, 24)).save(buffer, format="JPEG")
    return buffer.getvalue()


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_labelled_layouts_and_plain_images(tmp_path: Path) -> None:
    put(tmp_path / "a" / "none" / "x.jpg", jpeg(0))
    put(tmp_path / "a" / "roadwork" / "deep" / "y.jpg", jpeg(1))
    put(tmp_path / "b" / "0" / "z.jpg", jpeg(2))
    put(tmp_path / "plain" / "p.jpg", jpeg(3))
    put(tmp_path / "plain" / "more" / "q.png", jpeg(4))
    single = put(tmp_path / "single.jpg", jpeg(5))
    found, _ = collect([tmp_path / "a", tmp_path / "b", tmp_path / "plain", single], None)
    labels = {Path(image.name.split(":")[-1]).name: image.label for image in found}
    assert labels == {"x.jpg": 0, "y.jpg": 1, "z.jpg": 0, "p.jpg": -1, "q.png": -1, "single.jpg": -1}
    assert next(i for i in found if i.name.endswith("y.jpg")).read() == jpeg(1)


def test_csv_and_parquet_sets_are_read_by_the_eval_readers(tmp_path: Path) -> None:
    put(tmp_path / "imgs" / "a.jpg", jpeg(0))
    put(tmp_path / "imgs" / "b.jpg", jpeg(1))
    sheet = tmp_path / "set.csv"
    sheet.write_text("path,label\nimgs/a.jpg,no\nimgs/b.jpg,yes\n")
    table = pa.table({"image": [{"bytes": jpeg(7), "path": "p.jpg"}], "label": [1]})
    pq.write_table(table, tmp_path / "set.parquet")
    found, _ = collect([sheet, tmp_path / "set.parquet"], None)
    assert [(image.label, image.read()) for image in found] == [(0, jpeg(0)), (1, jpeg(1)), (1, jpeg(7))]


def test_a_set_the_eval_reader_refuses_stops_the_tool_with_its_reason(tmp_path: Path) -> None:
    sheet = tmp_path / "set.csv"
    sheet.write_text("path,label\na.jpg,perhaps\n")
    with pytest.raises(SystemExit, match="perhaps"):
        collect([sheet], None)
    with pytest.raises(SystemExit, match="no such"):
        collect([tmp_path / "missing"], None)


def test_labels_by_file_name_take_a_header_and_label_words(tmp_path: Path) -> None:
    image = put(tmp_path / "x.jpg", jpeg(0))
    names = tmp_path / "names.csv"
    names.write_text("path,label\nsomewhere/x.jpg,roadwork\n")
    assert [i.label for i in collect([image], names)[0]] == [1]
    names.write_text("x.jpg,2\n")
    with pytest.raises(SystemExit, match=r"names\.csv:1"):
        collect([image], names)


def test_misses_are_charged_as_wrong_answers() -> None:
    pairs: list[tuple[int, float | None]] = [(1, 0.9), (0, 0.2), (1, 0.4), (0, None), (1, None)]
    scores = label_scores(pairs)
    assert (scores["labelled"], scores["labelled_answered"], scores["labelled_missed"]) == (5, 3, 2)
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["accuracy_misses_wrong"] == pytest.approx(2 / 5)
    assert scores["mcc"] == pytest.approx(mcc([1, 0, 1], [0.9, 0.2, 0.4]))
    assert scores["mcc_misses_wrong"] == pytest.approx(mcc([1, 0, 1, 0, 1], [0.9, 0.2, 0.4, 1.0, 0.0]))
    assert label_scores([(1, None)])["accuracy"] is None


def test_the_pacer_spaces_request_starts_across_tasks() -> None:
    async def starts(rate: float, tasks: int) -> list[float]:
        pacer, times = Pacer(rate), []

        async def one() -> None:
            await pacer.wait()
            times.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(tasks)))
        return sorted(times)

    paced = asyncio.run(starts(20.0, 6))
    assert paced[-1] - paced[0] >= 5 * 0.05 - 0.01  # six starts, 50 ms apart
    assert all(b - a >= 0.04 for a, b in itertools.pairwise(paced))  # a timer may fire ~1 ms early
    unpaced = asyncio.run(starts(0.0, 6))
    assert unpaced[-1] - unpaced[0] < 0.25  # no spacing at all (generous: the box is shared)


def test_the_mcc_with_misses_charged_comes_with_its_interval():
    pairs = [(i % 2, float(i % 2) if i % 5 else None) for i in range(200)]  # every fifth request missed
    scores = label_scores(pairs)
    interval = scores["mcc_misses_wrong_interval"]
    assert isinstance(interval, dict)
    assert interval["estimate"] == scores["mcc_misses_wrong"] and interval["low"] < interval["estimate"] < 1.0
    assert "mcc_misses_wrong_interval" not in label_scores([(1, 0.9), (1, 0.2)])  # one class: no MCC to bound
