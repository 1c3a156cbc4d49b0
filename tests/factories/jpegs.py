"""JPEGs for the decoding tests: photo-like pictures in every subsampling mode, EXIF orientation, broken files,
and a host stand-in for nvJPEG with the same contract (a list in, a list out, nothing when one file fails)."""

from __future__ import annotations

import io
import struct

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like picture with a gradient that differs by channel and corner: an orientation or channel
    mix-up changes most pixels, while the smoothness keeps JPEG's chroma subsampling error small."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    base = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC)).astype(np.float32)
    rows, cols = np.mgrid[0:height, 0:width]
    base[..., 0] = 0.5 * base[..., 0] + 127.0 * cols / max(1, width - 1)
    base[..., 1] = 0.5 * base[..., 1] + 127.0 * rows / max(1, height - 1)
    return base.clip(0, 255).astype(np.uint8)


def jpeg_bytes(array: np.ndarray, quality: int = 75, subsampling: str = "4:2:0", orientation: int = 1,
               grey: bool = False, progressive: bool = False, keep_rgb: bool = False) -> bytes:
    """`array` saved as a JPEG; with `orientation` it is stored as is and tagged (the upright picture differs)."""
    image = Image.fromarray(array)
    if grey:
        image = image.convert("L")
    options: dict[str, object] = {"quality": quality, "progressive": progressive, "keep_rgb": keep_rgb}
    if not grey:
        options["subsampling"] = SUBSAMPLING[subsampling]
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def truncated(data: bytes) -> bytes:
    """The header intact, most of the scan gone: it opens, and no decoder can finish it."""
    return data[: max(700, len(data) // 4)]


def with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming another size: a decompression bomb's header."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def host_decoder(encoded: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """nvJPEG's contract on the host (PIL): 3xHxW uint8 RGB tensors, and no result at all if any file fails."""
    out = []
    for tensor in encoded:
        image = JpegImagePlugin.JpegImageFile(io.BytesIO(tensor.numpy().tobytes()))
        image.load()
        out.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).to(device))
    return out
