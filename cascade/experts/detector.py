"""ultralytics detector expert: roadwork objects (cones, barriers, signs...) become one image probability.

Image probability (noisy-OR). Take the confidences c_1..c_k of the k most confident detections of roadwork
classes (`options.top_k`, after `options.conf` and NMS) and read each as an independent chance that the image
shows roadwork:

    P(roadwork) = clip(1 - prod_i (1 - c_i), floor, 1)

with P = `options.floor` when no roadwork object is found. One confident cone is enough; several weak ones add
up; more than k detections add nothing (a row of fifty cones is no more roadwork than three). The floor keeps
"found nothing" from reading as certainty: detectors miss small and occluded objects. Calibration maps this
score to a probability later; noisy-OR only has to rank images well.

A batch is one `model.predict` call over the list of images (ultralytics letterboxes them into one tensor and
runs one forward pass). Images arrive RGB; ultralytics expects OpenCV's BGR order for numpy arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from cascade.experts.base import Expert, ExpertError, parameter_bytes


def resolve_classes(names: dict[int, str], wanted: Sequence[str | int]) -> list[int]:
    """Class indices of the configured roadwork classes: names matched case-insensitively, or indices.

    Names the model does not have are skipped with a warning (the defaults list aliases such as "cone" and
    "traffic cone" for different datasets); none matching at all is an error that lists the model's classes.
    """
    by_name = {str(label).strip().lower(): int(index) for index, label in names.items()}
    found: list[int] = []
    unknown: list[str | int] = []
    for item in wanted:
        index = item if isinstance(item, int) else by_name.get(item.strip().lower())
        if index is None or index not in names:
            unknown.append(item)
        elif index not in found:
            found.append(index)
    if not found:
        raise ExpertError(
            f"none of the roadwork classes {list(wanted)} is a class of the detector (model.names: {dict(names)}); "
            "set options.classes to names or indices it has"
        )
    if unknown:
        logger.warning("detector classes {} are not in model.names and are ignored", unknown)
    return found


def noisy_or(confidences: Sequence[float], top_k: int, floor: float) -> float:
    """1 - prod(1 - c_i) over the `top_k` largest confidences, clipped to [floor, 1]; `floor` when empty."""
    top = sorted((min(1.0, max(0.0, float(c))) for c in confidences), reverse=True)[:top_k]
    miss = 1.0
    for confidence in top:
        miss *= 1.0 - confidence
    return min(1.0, max(floor, 1.0 - miss))


def precision_kwargs(half: bool) -> dict[str, Any]:
    """The predict argument for fp16: `quantize=16` in recent ultralytics (which deprecates `half`), else `half`."""
    if not half:
        return {}
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}


class DetectorExpert(Expert):
    """An ultralytics YOLO / RT-DETR checkpoint read through `noisy_or` (see the module docstring)."""

    def load(self) -> None:
        # Before ultralytics is imported: it must never try to reach its hub from a miner.
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        source = self.config.model
        looks_local = source.endswith((".pt", ".yaml", ".yml")) and (os.sep in source or source.startswith("."))
        if looks_local and not Path(source).is_file():
            raise ExpertError(f"expert {self.name}: detector weights {source!r} do not exist")
        try:
            self.yolo: Any = YOLO(source, task="detect")
        except Exception as exc:  # ultralytics raises many types (FileNotFoundError, ModuleNotFoundError, ...)
            raise ExpertError(f"expert {self.name}: cannot load detector {source!r}: {exc}") from exc
        names = self.yolo.names
        if not isinstance(names, dict):
            names = dict(enumerate(names))
        self.class_ids = resolve_classes(names, self.options.classes)
        self.imgsz = self.config.input_size or 640
        self.cuda = self.device.startswith("cuda")
        # ultralytics runs fp16 or fp32 only: any half-width dtype (and 'auto' on CUDA) means half
        self.half = self.cuda and self.config.dtype != "float32"
        self.precision = precision_kwargs(self.half)
        self.yolo.to(self.device)
        logger.info(
            "expert {}: detector {} classes {} at {}px on {}{}",
            self.name,
            source,
            {i: names[i] for i in self.class_ids},
            self.imgsz,
            self.device,
            " (fp16)" if self.half else "",
        )

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        bgr = []
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected HxWx3 uint8 images, got shape {image.shape} dtype {image.dtype}")
            bgr.append(np.ascontiguousarray(image[:, :, ::-1]))
        results = list(
            self.yolo.predict(
                bgr,
                imgsz=self.imgsz,
                conf=self.options.conf,
                iou=self.options.iou,
                classes=self.class_ids,
                max_det=self.options.max_det,
                device=self.device,
                **self.precision,
                verbose=False,
            )
        )
        if len(results) != len(images):
            raise ExpertError(f"expert {self.name}: detector returned {len(results)} results for {len(images)} images")
        return [self._image_probability(result) for result in results]

    def _image_probability(self, result: Any) -> float:
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return float(self.options.floor)
        confidences = boxes.conf.float().cpu().numpy()
        classes = boxes.cls.int().cpu().numpy()
        # `classes=` already filtered NMS; the mask also covers backends that ignore it (exported engines)
        keep = np.isin(classes, self.class_ids)
        return noisy_or(confidences[keep].tolist(), self.options.top_k, self.options.floor)

    def input_side(self) -> int | None:
        return int(self.imgsz)

    def memory_bytes(self) -> int:
        model = getattr(self.yolo, "model", None)
        return parameter_bytes(model) if model is not None and hasattr(model, "parameters") else 0

    def close(self) -> None:
        self.yolo = None
