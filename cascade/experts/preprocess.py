"""Image batches as normalised tensors, resized on the expert's own device.

On a GPU each image is copied to the device as uint8 (a quarter of the float bytes) and resized there
with antialiasing: resizing full dashcam frames on the host would dominate small-model latency. On the
CPU, PIL's reducing resize is the faster path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def batch_tensor(
    images: Sequence[np.ndarray],
    size_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: str,
    dtype: torch.dtype,
    rescale: float = 1.0 / 255.0,
    channels_last: bool = False,
) -> torch.Tensor:
    """N x 3 x H x W tensor: each image squashed to `size_hw` (no crop), rescaled and normalised."""
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected HxWx3 uint8 images, got shape {image.shape} dtype {image.dtype}")
    if device == "cpu":
        batch = torch.cat([_resize_on_host(image, size_hw) for image in images], dim=0)
    else:
        batch = _resize_on_device(images, size_hw, device)
    mean_t = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1) / rescale
    std_t = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1) / rescale
    batch = ((batch - mean_t) / std_t).to(dtype)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def _resize_on_device(images: Sequence[np.ndarray], size_hw: tuple[int, int], device: str) -> torch.Tensor:
    """Images of one shape are copied into one uint8 device tensor and resized together.

    A handful of torch calls per distinct shape, whatever the batch size: under load each call that
    drops the GIL may wait a whole switch interval to get it back, so per-image calls (hundreds
    per batch) made the expert thread crawl behind the decode and event-loop threads.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault((image.shape[0], image.shape[1]), []).append(index)
    parts: list[torch.Tensor] = []
    order: list[int] = []
    for (height, width), indices in groups.items():
        host = np.stack([images[index] for index in indices])  # one host copy, then one transfer
        part = torch.from_numpy(host).to(device).permute(0, 3, 1, 2).float()
        if (height, width) != tuple(size_hw):
            part = F.interpolate(part, size=size_hw, mode="bilinear", antialias=True, align_corners=False)
        parts.append(part)
        order.extend(indices)
    if len(parts) == 1:
        return parts[0]
    batch = torch.cat(parts, dim=0)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return batch[inverse.to(device)]


def _writable(image: np.ndarray) -> np.ndarray:
    return image if image.flags.writeable else np.array(image)


def _resize_on_host(image: np.ndarray, size_hw: tuple[int, int]) -> torch.Tensor:
    """CPU path: PIL's reducing resize is ~3x faster than torch's antialiased interpolate on the host."""
    if image.shape[:2] != tuple(size_hw):
        pil = Image.fromarray(image).resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR, reducing_gap=2.0)
        image = np.asarray(pil)
    return torch.from_numpy(_writable(image)).permute(2, 0, 1).unsqueeze(0).float()


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
