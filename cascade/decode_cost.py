"""What decoding an image will cost, read from its header before any pixel is decoded (defects 1 and 7
of the second red-team pass, docs/security.md).

Two figures, both upper bounds meant to be compared with limits:

- work: samples the decoder visits, pixels x components, once per JPEG scan. Pixel limits do not bound time: a
  progressive JPEG is decoded scan by scan and libjpeg walks every block of a scan's components whatever the scan
  holds, so 2,000 empty scans over a 6000x6000 frame (90 KB) cost ~8 s on the 2-core box where the same frame
  with ten scans costs ~0.1 s. Work above `decode.max_decode_work`, or more than `decode.max_jpeg_scans` scans, is
  refused at once (`DecodeRefused`); work above `decode.isolate_above_work` is decoded in a killable worker process
  (cascade/decode_pool.py).
- held bytes: the peak memory of the decode, by format and mode, for `decode.budget_bytes`. A pixel is not a
  fixed number of bytes: Pillow holds RGB as four bytes, a 16-bit grey PNG as two, WebP decodes through a buffer
  of its own, an image with alpha is premultiplied at full size to be reduced, the array handed on costs six bytes
  a pixel (Pillow's `tobytes` and the writable copy), and a progressive or multi-scan JPEG keeps a coefficient
  buffer of two bytes per sample at full size however small its reduced decode (`draft`) is.

The per-format figures were measured on Pillow 13 (peak resident memory of one decode, 3000x3000, with and without
downscaling: `tests/unit/test_decode_cost.py` checks them against the real decode) and carry a margin
(`_MARGIN`): the budget must hold, so the estimate errs above.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from cascade.config import DecodeConfig
from cascade.decode_errors import DecodeRefused
from cascade.jpeg_header import jpeg_scans

_MARGIN = 1.3
# Bytes per pixel Pillow holds once the image is loaded, by mode (its own storage: 1, 2 or 4 bytes).
_STORED = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_STORED_DEFAULT = 4
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_KEPT_MODES = frozenset({"RGB", "RGBA", "L", "LA"})  # reduced and turned as they are; others are converted first
_DECODER_EXTRA = {"JPEG": 1, "WEBP": 9}  # bytes per held pixel the decoder itself holds (WebP: its RGBA frame)
_ARRAY_OUT = 6  # per output pixel: tobytes() (3) and the writable copy (3)
_IMAGE_OUT = 4  # per output pixel, per full-size step at the output size (resize, transpose, conversion to RGB)


@dataclass(frozen=True)
class DecodeWork:
    """What the header says the decoder will go through (see the module)."""

    samples: int  # pixels x components, once per JPEG scan
    scans: int  # JPEG scans (1 for other formats)
    coefficient_bytes: int  # a progressive or multi-scan JPEG's full-size coefficient buffer (0 otherwise)


def decode_work(image: Image.Image, data: bytes, limits: DecodeConfig) -> DecodeWork:
    """The opened header's work, before any `draft`; DecodeRefused over `max_jpeg_scans` or `max_decode_work`."""
    width, height = image.size
    components = len(image.getbands())
    scans, samples, coefficients = 1, width * height * components, 0
    if image.format == "JPEG":
        counted = jpeg_scans(data, limits.max_jpeg_scans)
        if not counted.complete:
            raise DecodeRefused("jpeg_scans", f"image: a JPEG of more than {limits.max_jpeg_scans} scans "
                                "(decode.max_jpeg_scans) is refused: each scan costs a pass over the whole frame")
        scans = max(1, counted.scans)
        samples = width * height * max(components, counted.scan_components)
        if scans > 1 or image.info.get("progressive"):
            coefficients = _coefficient_bytes(image)
    if samples > limits.max_decode_work:
        raise DecodeRefused("decode_work", f"image: decoding {width}x{height} in {scans} scan(s) is estimated at "
                            f"{samples} samples, over the limit of {limits.max_decode_work} (decode.max_decode_work)")
    return DecodeWork(samples, scans, coefficients)


def held_bytes(image: Image.Image, work: DecodeWork, held: tuple[int, int], out: tuple[int, int],
               orientation: int) -> int:
    """Peak bytes of `cascade.decode._pixels` for this image: `held` is the size the decoder allocates (after
    `draft`), `out` the array's (see the module for where each term comes from)."""
    mode = image.mode
    held_pixels, out_pixels = held[0] * held[1], out[0] * out[1]
    per_held = _STORED.get(mode, _STORED_DEFAULT) + _DECODER_EXTRA.get(image.format or "", 0)
    if mode in _SIXTEEN_BIT:
        per_held += 1  # reduced to 8-bit grey band by band (`_eight_bit`): one more byte a pixel, plus a band
    elif mode not in _KEPT_MODES:
        per_held += 4  # converted to RGB or RGBA at the decoded size
    downscaled = out_pixels < held_pixels
    if downscaled and ("A" in mode or "transparency" in image.info):
        per_held += 4  # Pillow premultiplies alpha at full size to reduce
    steps = int(downscaled) + int(orientation != 1) + int(mode != "RGB")
    per_out = _ARRAY_OUT + _IMAGE_OUT * steps
    return int(_MARGIN * (held_pixels * per_held + out_pixels * per_out + work.coefficient_bytes))


def _coefficient_bytes(image: Image.Image) -> int:
    """The full-size coefficient buffer of a progressive or multi-scan JPEG: 64 two-byte coefficients a block.

    Pillow's JPEG plugin keeps each frame component as (id, horizontal, vertical, table); a component sampled less
    than the largest factor has fewer blocks. Without that list every component counts in full.
    """
    width, height = image.size
    layers = getattr(image, "layer", None) or []
    if not layers:
        return width * height * len(image.getbands()) * 2
    h_max = max(layer[1] for layer in layers) or 1
    v_max = max(layer[2] for layer in layers) or 1
    blocks = 0
    for _, h, v, _ in layers:
        blocks += _ceil(_ceil(width * h, h_max), 8) * _ceil(_ceil(height * v, v_max), 8)
    return blocks * 64 * 2


def _ceil(a: int, b: int) -> int:
    return -(-a // b)
