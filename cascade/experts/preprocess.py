"""Image batches as normalised tensors, resized on the expert's own device, in one of three resize modes.

On a GPU each image is copied to the device as uint8 (a quarter of the float bytes) and resized there
with antialiasing: resizing full dashcam frames on the host would dominate small-model latency. Images
already on the device (3xHxW uint8 tensors, as nvJPEG decodes them: cascade/experts/jpeg.py) take the
same path without the copy. On the CPU, PIL's reducing resize is the faster path. Both paths share the
geometry of `plan_resize`:

- `squash`: the whole image is resized to the input, aspect ratio lost (what ViT and SigLIP processors do);
- `letterbox`: the whole image is scaled to fit inside the input, aspect kept, centred, and the border is
  filled with the processor's mean (so it normalises to 0);
- `center_crop`: the largest centred crop with the input's aspect ratio is resized to the input.

A model folder records the mode it was trained with in `sn72_preprocess.json` (`PREPROCESS_FILE`), so
train and serve see the same pixels; the expert's YAML `resize` wins over it, with a warning when they differ.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from cascade.config import ResizeMode
from cascade.experts.base import ExpertError

PREPROCESS_FILE = "sn72_preprocess.json"
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)


@dataclass(frozen=True)
class ResizePlan:
    """Where one source shape lands in the target: crop the source, resize the crop, paste it at `offset`."""

    crop: tuple[int, int, int, int]  # top, left, height, width in the source
    resized_hw: tuple[int, int]  # size the crop is resized to
    offset: tuple[int, int]  # top, left of the resized crop in the target (letterbox only)

    def fills_target(self, target_hw: tuple[int, int]) -> bool:
        return self.resized_hw == tuple(target_hw)


def plan_resize(source_hw: tuple[int, int], target_hw: tuple[int, int], mode: ResizeMode) -> ResizePlan:
    """The geometry of one resize mode for one source shape (see the module docstring)."""
    height, width = source_hw
    target_h, target_w = target_hw
    full = (0, 0, height, width)
    if mode == "squash":
        return ResizePlan(full, (target_h, target_w), (0, 0))
    if mode == "letterbox":
        scale = min(target_h / height, target_w / width)
        new_h = min(target_h, max(1, round(height * scale)))
        new_w = min(target_w, max(1, round(width * scale)))
        # NOTE: centred, the odd pixel of border goes below/right (ultralytics does the same).
        return ResizePlan(full, (new_h, new_w), ((target_h - new_h) // 2, (target_w - new_w) // 2))
    if mode == "center_crop":
        if width * target_h > height * target_w:  # wider than the target: keep the height, crop the sides
            crop_h, crop_w = height, min(width, max(1, round(height * target_w / target_h)))
        else:
            crop_h, crop_w = min(height, max(1, round(width * target_h / target_w))), width
        return ResizePlan(((height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w), (target_h, target_w), (0, 0))
    raise ValueError(f"unknown resize mode {mode!r}; known: {RESIZE_MODES}")


Pixels = np.ndarray | torch.Tensor  # HxWx3 uint8 array on the host, or 3xHxW uint8 tensor (on the device)

# Images resized together at most: bounds the float copy a group of large frames makes on the device (12 bytes
# a pixel), whatever the batch size.
CHUNK_PIXELS = 32 * 2**20


def _hw(image: Pixels) -> tuple[int, int]:
    return (image.shape[1], image.shape[2]) if isinstance(image, torch.Tensor) else (image.shape[0], image.shape[1])


def _check_pixels(image: Pixels) -> None:
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected 3xHxW uint8 tensors, got shape {tuple(image.shape)} dtype {image.dtype}")
    elif image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 images, got shape {image.shape} dtype {image.dtype}")


@functools.lru_cache(maxsize=64)
def normalising_constants(
    mean: tuple[float, ...], std: tuple[float, ...], rescale: float, device: str, fill: tuple[float, ...] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean, std and the letterbox fill as 1 x 3 x 1 x 1 float tensors in pixel units on `device`, made once.

    Made at every batch, each was a copy from the host that waits for the device's stream (and a division): at batch
    1 on a GPU the decode's work had to finish before the resize could even be queued. Never modified in place.
    """
    with torch.inference_mode(False):  # ordinary tensors: training code calls batch_tensor with autograd on
        mean_t = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1) / rescale
        std_t = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1) / rescale
        fill_t = mean_t if fill is None else torch.tensor(fill, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    return mean_t, std_t, fill_t


def batch_tensor(
    images: Sequence[Pixels],
    size_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: str,
    dtype: torch.dtype,
    rescale: float = 1.0 / 255.0,
    channels_last: bool = False,
    resize: ResizeMode = "squash",
    fill: Sequence[float] | None = None,
) -> torch.Tensor:
    """N x 3 x H x W tensor: each image resized to `size_hw` by `resize`, rescaled and normalised.

    `fill` is the letterbox border in pixel units (0-255) per channel; None is the mean, which normalises to 0.
    """
    for image in images:
        _check_pixels(image)
    mean_t, std_t, fill_t = normalising_constants(tuple(mean), tuple(std), rescale, device,
                                                  None if fill is None else tuple(fill))
    if device == "cpu":
        arrays = [image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else image for image in images]
        batch = torch.cat([resize_on_host(image, size_hw, resize, fill_t) for image in arrays], dim=0)
    else:
        batch = resize_on_device(images, size_hw, device, resize, fill_t)
    batch = ((batch - mean_t) / std_t).to(dtype)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def _place(part: torch.Tensor, plan: ResizePlan, size_hw: tuple[int, int], fill: torch.Tensor) -> torch.Tensor:
    """Paste resized crops (N x 3 x h x w) onto a `fill`-coloured canvas of the target size (letterbox)."""
    if plan.fills_target(size_hw):
        return part
    canvas = fill.to(part.dtype).expand(part.shape[0], 3, *size_hw).clone()
    top, left = plan.offset
    canvas[:, :, top : top + plan.resized_hw[0], left : left + plan.resized_hw[1]] = part
    return canvas


def resize_on_device(
    images: Sequence[Pixels],
    size_hw: tuple[int, int],
    device: str,
    resize: ResizeMode = "squash",
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """N x 3 x H x W float tensor (pixel units): images of one shape are gathered into one uint8 device tensor
    and resized together. `fill`: the letterbox border (1 x 3 x 1 x 1, pixel units; default 0).

    Host arrays are cropped on the host (fewer bytes to copy), stacked and copied in one transfer; device
    tensors are cropped and stacked where they are. A handful of torch calls per distinct shape, whatever
    the batch size: under load each call that drops the GIL may wait a whole switch interval to get it back,
    so per-image calls (hundreds per batch) made the expert thread crawl behind the decode and event-loop threads.
    """
    fill_t = torch.zeros((1, 3, 1, 1), device=device) if fill is None else fill
    groups: dict[tuple[int, int, bool], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault((*_hw(image), isinstance(image, torch.Tensor)), []).append(index)
    parts: list[torch.Tensor] = []
    order: list[int] = []
    for (height, width), indices in ((key[:2], value) for key, value in groups.items()):
        plan = plan_resize((height, width), size_hw, resize)
        per_chunk = max(1, CHUNK_PIXELS // (height * width))
        for start in range(0, len(indices), per_chunk):
            chunk = indices[start : start + per_chunk]
            part = _gathered([images[index] for index in chunk], plan, device)
            if plan.crop[2:] != plan.resized_hw:
                part = F.interpolate(part, size=plan.resized_hw, mode="bilinear", antialias=True, align_corners=False)
            parts.append(_place(part, plan, size_hw, fill_t))
            order.extend(chunk)
    if len(parts) == 1:
        return parts[0]
    batch = torch.cat(parts, dim=0)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return batch[inverse.to(device)]


def _gathered(images: Sequence[Pixels], plan: ResizePlan, device: str) -> torch.Tensor:
    """Images of one shape (all arrays or all tensors), cropped by `plan`, as one N x 3 x h x w float tensor."""
    top, left, crop_h, crop_w = plan.crop
    tensors = [image for image in images if isinstance(image, torch.Tensor)]
    if tensors:
        crops = [t[:, top : top + crop_h, left : left + crop_w] for t in tensors]
        return torch.stack(crops).to(device).float()
    # the stack is the one host copy, then one transfer
    host = np.stack([image[top : top + crop_h, left : left + crop_w] for image in images])
    return torch.from_numpy(host).to(device).permute(0, 3, 1, 2).float()


def _writable(image: np.ndarray) -> np.ndarray:
    return image if image.flags.writeable else np.array(image)


def resize_on_host(
    image: np.ndarray, size_hw: tuple[int, int], resize: ResizeMode = "squash", fill: torch.Tensor | None = None
) -> torch.Tensor:
    """1 x 3 x H x W float tensor (pixel units) of one image, resized on the CPU; `fill` as `resize_on_device`.

    PIL's reducing resize is ~3x faster than torch's antialiased interpolate on the host. Training code
    uses this too, so a trained model sees the pixels the miner will give it.
    """
    plan = plan_resize((image.shape[0], image.shape[1]), size_hw, resize)
    top, left, crop_h, crop_w = plan.crop
    image = image[top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) != plan.resized_hw:
        pil = Image.fromarray(np.ascontiguousarray(image)).resize(
            (plan.resized_hw[1], plan.resized_hw[0]), Image.Resampling.BILINEAR, reducing_gap=2.0
        )
        image = np.asarray(pil)
    part = torch.from_numpy(_writable(image)).permute(2, 0, 1).unsqueeze(0).float()
    return _place(part, plan, size_hw, torch.zeros((1, 3, 1, 1)) if fill is None else fill)


class PreprocessRecord(BaseModel):
    """What a model folder's `sn72_preprocess.json` says; keys a later trainer adds are ignored."""

    model_config = ConfigDict(extra="ignore")

    resize: ResizeMode


def write_preprocess_record(folder: Path, resize: ResizeMode) -> Path:
    """Record in a model folder the resize mode it was trained with (the trainer calls this)."""
    path = Path(folder) / PREPROCESS_FILE
    path.write_text(PreprocessRecord(resize=resize).model_dump_json(indent=2) + "\n")
    return path


def recorded_resize(model: str) -> ResizeMode | None:
    """The resize mode recorded beside a model's config.json (local folder or hub snapshot); None if none."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        path: str | None = str(folder / PREPROCESS_FILE) if (folder / PREPROCESS_FILE).is_file() else None
    else:
        from transformers.utils import cached_file

        path = cached_file(
            model,
            PREPROCESS_FILE,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    if path is None:
        return None
    try:
        return PreprocessRecord.model_validate(json.loads(Path(path).read_text())).resize
    except (OSError, ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        raise ExpertError(f"cannot read the resize mode of {model!r} from {path}: {exc}") from exc


# Where an expert's resize mode came from, as the load log says it.
RESIZE_SOURCES = {"config": "the cascade YAML", "model": f"the model folder's {PREPROCESS_FILE}",
                  "default": "the backend's default"}


@dataclass(frozen=True)
class Preprocessing:
    """What an expert's images become before its model sees them; the engine logs it once per expert at load,
    because a mode that differs from the training one costs accuracy without any error to show for it."""

    input: str  # the model's input, e.g. "224x224" (or how a variable input is bounded)
    resize: str  # a ResizeMode, or what stands in for one
    source: str  # a key of RESIZE_SOURCES

    def describe(self) -> str:
        return f"input {self.input}, resize {self.resize} (from {RESIZE_SOURCES[self.source]})"


def preprocessing(size_hw: tuple[int, int], resize: ResizeMode, source: str) -> Preprocessing:
    return Preprocessing(f"{size_hw[0]}x{size_hw[1]}", resize, source)


def resolve_resize(
    expert: str, configured: ResizeMode | None, recorded: ResizeMode | None, default: ResizeMode = "squash"
) -> ResizeMode:
    """The YAML's mode if set (warning when the model folder recorded another), else the recorded one, else
    the backend's default."""
    return choose_resize(expert, configured, recorded, default)[0]


def choose_resize(
    expert: str, configured: ResizeMode | None, recorded: ResizeMode | None, default: ResizeMode = "squash"
) -> tuple[ResizeMode, str]:
    """`resolve_resize`'s mode and where it came from (a key of RESIZE_SOURCES)."""
    if configured is None:
        return (recorded, "model") if recorded is not None else (default, "default")
    if recorded is not None and recorded != configured:
        logger.warning(
            "expert {}: resize={} from the config overrides the model's recorded {} ({}): the model will see "
            "other pixels than it was trained on",
            expert,
            configured,
            recorded,
            PREPROCESS_FILE,
        )
    return configured, "config"


def processor_geometry(
    processor: object, override: int | None
) -> tuple[tuple[int, int], list[float], list[float], float]:
    """(size_hw, mean, std, rescale) read from a transformers image processor, with a square override."""
    size = getattr(processor, "size", None)

    def field(name: str) -> int | None:
        value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
        return int(value) if value else None

    height, width, shortest = field("height"), field("width"), field("shortest_edge")
    if override is not None:
        size_hw = (override, override)
    elif height and width:
        size_hw = (height, width)
    elif shortest:
        size_hw = (shortest, shortest)
    else:
        size_hw = (224, 224)
    mean = list(getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5])
    std = list(getattr(processor, "image_std", None) or [0.5, 0.5, 0.5])
    rescale = float(getattr(processor, "rescale_factor", None) or 1.0 / 255.0)
    if not getattr(processor, "do_normalize", True):
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return size_hw, mean, std, rescale
