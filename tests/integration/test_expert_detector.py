"""Detector expert on a tiny YOLO11 built from its yaml, loaded from a local .pt through the registry."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from cascade.experts.base import ExpertError
from cascade.experts.detector import DetectorExpert, noisy_or, resolve_classes
from sn72_lab.tiny_models import BUILDERS, TINY_YOLO_NAMES
from tests.factories.experts import load_expert, make_images

SIZES = [(224, 224), (480, 640), (50, 900)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return BUILDERS["tiny-yolo"](tmp_path_factory.mktemp("yolo"))


def make_expert(weights: Path, device: str = "cpu", **overrides: Any) -> DetectorExpert:
    return load_expert(DetectorExpert, "detector", weights, device, **{"name": "det", **overrides})


def test_noisy_or_of_the_top_k() -> None:
    assert noisy_or([0.5, 0.5], top_k=3, floor=0.0) == pytest.approx(0.75)
    assert noisy_or([0.1, 0.9, 0.5, 0.2], top_k=2, floor=0.0) == pytest.approx(1 - 0.1 * 0.5)
    assert noisy_or([], top_k=3, floor=0.02) == 0.02
    assert noisy_or([0.001], top_k=3, floor=0.02) == 0.02  # clipped up to the floor
    assert noisy_or([1.0, 0.3], top_k=3, floor=0.02) == 1.0


def test_classes_match_names_case_insensitively_or_by_index() -> None:
    names = dict(enumerate(TINY_YOLO_NAMES))
    assert resolve_classes(names, ["CONE", " Barrier ", "excavator"]) == [2, 3]
    assert resolve_classes(names, [4, "cone", 4]) == [4, 2]
    with pytest.raises(ExpertError, match="construction sign"):
        resolve_classes(names, ["excavator", 17])


@pytest.mark.slow
def test_one_probability_per_image_for_batches_of_mixed_sizes(weights: Path) -> None:
    expert = make_expert(weights)
    assert expert.class_ids == [2, 3, 4]  # the default names that this model has
    single = expert.predict_batch(make_images(SIZES[:1]))
    several = expert.predict_batch(make_images(SIZES))
    assert len(single) == 1 and len(several) == len(SIZES)
    floor = expert.options.floor
    assert all(floor <= p <= 1.0 for p in single + several)
    assert expert.memory_bytes() > 0


@pytest.mark.slow
def test_real_detections_are_combined_by_noisy_or(weights: Path) -> None:
    # conf 0 keeps every box of the random network, so the noisy-OR path (not just the floor) runs
    every_class = list(range(len(TINY_YOLO_NAMES)))
    expert = make_expert(weights, input_size=160, options={"classes": every_class, "conf": 0.0, "floor": 0.0})
    images = make_images(SIZES)
    probabilities = expert.predict_batch(images)
    bgr = [np.ascontiguousarray(image[:, :, ::-1]) for image in images]
    results = expert.yolo.predict(bgr, imgsz=160, conf=0.0, classes=every_class, verbose=False)
    for p, result in zip(probabilities, results, strict=True):
        assert len(result.boxes) > 0
        assert p == pytest.approx(noisy_or(result.boxes.conf.tolist(), expert.options.top_k, 0.0), rel=1e-5)
        assert p > 0.0


@pytest.mark.slow
def test_one_predict_call_with_bgr_arrays_and_class_filter(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expert = make_expert(weights, input_size=320, options={"classes": ["cone", 3], "top_k": 2, "conf": 0.1})
    calls: list[tuple[list[np.ndarray], dict[str, Any]]] = []

    def fake_predict(sources: list[np.ndarray], **kwargs: Any) -> list[Any]:
        calls.append((sources, kwargs))
        return [
            SimpleNamespace(boxes=_Boxes([0.9, 0.8, 0.5], [0, 2, 3])),  # class 0 (person) must not count
            SimpleNamespace(boxes=_Boxes([], [])),
            SimpleNamespace(boxes=None),
        ]

    monkeypatch.setattr(expert.yolo, "predict", fake_predict)
    images = make_images(SIZES)
    probabilities = expert.predict_batch(images)
    assert len(calls) == 1  # one forward pass for the batch
    sources, kwargs = calls[0]
    assert len(sources) == 3 and all(np.array_equal(s, i[:, :, ::-1]) for s, i in zip(sources, images, strict=True))
    assert kwargs["imgsz"] == 320 and kwargs["conf"] == 0.1 and kwargs["iou"] == expert.options.iou
    assert kwargs["classes"] == [2, 3] and kwargs["device"] == "cpu" and kwargs["verbose"] is False
    assert "half" not in kwargs and "quantize" not in kwargs  # fp32 on the CPU
    assert probabilities == pytest.approx([1 - 0.2 * 0.5, expert.options.floor, expert.options.floor])


class _Boxes:
    """The part of ultralytics' `Boxes` that the expert reads."""

    def __init__(self, conf: list[float], cls: list[int]) -> None:
        self.conf = torch.tensor(conf, dtype=torch.float32)
        self.cls = torch.tensor(cls, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.conf)


@pytest.mark.slow
def test_unknown_class_names_are_a_clear_error(weights: Path) -> None:
    with pytest.raises(ExpertError, match=r"model\.names.*construction sign"):
        make_expert(weights, options={"classes": ["pothole", "excavator"]})


def test_missing_local_weights_fail_without_a_download(tmp_path: Path) -> None:
    with pytest.raises(ExpertError, match="do not exist"):
        make_expert(tmp_path / "nowhere" / "model.pt")


@pytest.mark.gpu
def test_half_precision_on_cuda(weights: Path) -> None:
    expert = make_expert(weights, device="cuda:0")
    assert expert.half
    probabilities = expert.predict_batch(make_images(SIZES))
    assert len(probabilities) == len(SIZES) and all(0.0 <= p <= 1.0 for p in probabilities)
