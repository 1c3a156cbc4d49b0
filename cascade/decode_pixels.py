"""Pixels from an opened, checked image header: load, reduce, turn upright, RGB (cascade/decode.py checks first).

Every step closes its input once its output exists, so the memory a decode holds is what
cascade/decode_cost.py estimates for the budget, whatever the mode.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {  # EXIF orientation -> what makes the picture upright
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_BAND_ROWS = 256  # rows of a 16-bit image reduced to 8 bits at a time


def orientation_of(image: Image.Image) -> int:
    """EXIF orientation from the header's EXIF block (1 when absent).

    Read from `info`, not `getexif()`: for a PNG that would decode every pixel, before the budget.
    """
    raw = image.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is not worth refusing the image for
        return 1
    return value if isinstance(value, int) else 1


def upright_rgb(image: Image.Image, target: tuple[int, int] | None, orientation: int) -> np.ndarray:
    """Load, shrink in the image's own mode, turn upright, then convert to RGB (smallest copies first).

    Each step's input is closed as soon as its output exists, so at most two full-size copies are held at once
    (the peak `cascade/decode_cost.py` estimates); the caller's close of the opened image is then a no-op.
    """
    image.load()
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _then_close(image, _eight_bit(image))
    elif image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = _then_close(image, image.convert("RGBA" if "A" in image.mode or "transparency" in image.info
                                                 else "RGB"))
    if target is not None and image.size[0] * image.size[1] > target[0] * target[1]:
        factor = min(image.size[0] // target[0], image.size[1] // target[1])
        if factor >= 2:
            image = _then_close(image, image.reduce(factor))  # box reduction by an integer factor: fast and light
        if image.size != target:
            image = _then_close(image, image.resize(target, Image.Resampling.BILINEAR))
    for step in _TRANSPOSE.get(orientation, ()):
        image = _then_close(image, image.transpose(step))
    if image.mode != "RGB":
        image = _then_close(image, image.convert("RGB"))
    array = np.asarray(image)
    image.close()  # before the copy below: the array holds its own bytes
    # Experts hand the array to torch without a copy, which needs it writable.
    return array if array.flags.writeable else array.copy()


def _then_close(old: Image.Image, new: Image.Image) -> Image.Image:
    if new is not old:
        old.close()
    return new


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grey -> 8-bit grey by its high byte (Pillow's own conversion clips at 255 instead).

    Mode "I" (32-bit) also holds 8-bit data after some conversions: it is shifted only when it uses
    more than 8 bits. Band by band: one byte a pixel more than the image (defect 7 of the second red-team pass:
    converting it whole through int64 took ~25 bytes a pixel, and three 5600x5600 PNGs took 2.5 GB).
    """
    width, height = image.size
    shift = 8 if image.mode != "I" or int(image.getextrema()[1]) > 255 else 0  # type: ignore[arg-type,index]
    grey = np.empty((height, width), np.uint8)
    for top in range(0, height, _BAND_ROWS):
        bottom = min(height, top + _BAND_ROWS)
        with image.crop((0, top, width, bottom)) as band:
            grey[top:bottom] = np.clip(np.asarray(band) >> shift, 0, 255)
    return Image.fromarray(grey, mode="L")
