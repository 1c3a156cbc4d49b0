"""Safe decoding of base64 JPEG/PNG/WebP into RGB arrays.

Everything is checked before the expensive step: payload length before base64 decoding, the
container format, the declared pixel count and the estimated decoding work (JPEG scans included,
cascade/decode_cost.py) from the header before any pixel is decoded, and the memory that concurrent
decodes may hold is bounded by a budget in bytes, estimated per image by format and mode. JPEGs are decoded at
reduced scale by the codec itself (`draft`); other formats are reduced in their own mode before
any colour conversion, so a large PNG is held once, not three times.

Images are opened through the accepted formats' own plugin classes, never through
`PIL.Image.open`: ultralytics replaces that function process-wide with one that tries to
pip-install a HEIF plugin (and resolves public DNS names) whenever a payload is unreadable.

`decode_or_defer` runs the same checks and leaves a JPEG that a GPU expert can decode on its device
encoded (`DeviceJpeg`, docs/decoding.md): the expert decodes it in its batch (cascade/experts/jpeg.py).

These are pure functions of the bytes and the limits, safe on any thread. Which of them a request needs, when,
and on which thread or process is decided by its image (cascade/request_image.py).
"""

from __future__ import annotations

import binascii
import hashlib
import io
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pybase64
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from cascade.config import DecodeConfig
from cascade.decode_cost import DecodeWork, decode_work, held_bytes
from cascade.decode_errors import DecodeBusy, DecodeError, DecodeRefused
from cascade.decode_pixels import orientation_of, upright_rgb
from cascade.jpeg_header import header_problem, plain_jpeg

__all__ = ["DecodeBusy", "DecodeError", "DecodeRefused"]  # re-exported: callers import them from here

# The plugin modules above register their (factory, accept) pair in Image.OPEN on import.
_PLUGINS = (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin)


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray  # HxWx3 uint8 RGB, upright (EXIF orientation applied)
    encoded: bytes
    sha256: str
    original_size: tuple[int, int]  # (width, height) as sent, before orientation
    downscaled: bool


@dataclass(frozen=True, eq=False)
class DeviceJpeg:
    """A JPEG whose header passed every check, left encoded for a GPU expert to decode in its batch.

    Only JPEGs the device decoder handles as PIL would are deferred (`decode_or_defer`); `host_pixels`
    is the PIL path for the same bytes: the fallback when the device decoder refuses the file anyway.
    """

    data: bytes
    size: tuple[int, int]  # (width, height) as stored, before orientation
    orientation: int  # EXIF orientation (1-8), applied on the device after decoding
    limits: DecodeConfig = field(repr=False)
    min_side: int | None = None  # the reduced decode's target, for the PIL fallback

    @property
    def upright_hw(self) -> tuple[int, int]:
        """(height, width) once turned upright: orientations 5-8 swap the sides."""
        width, height = self.size
        return (width, height) if self.orientation in (5, 6, 7, 8) else (height, width)

    def host_pixels(self) -> np.ndarray:
        """The upright RGB array PIL makes of these bytes (DecodeError if it cannot either)."""
        return decode_image(self.data, self.limits, self.min_side).image


@dataclass(frozen=True, eq=False)
class HeavyImage:
    """An image whose estimated work is above `isolate_above_work`: checked, left for a killable worker process
    (cascade/decode_pool.py) that decodes it as `decode_image` would and is ended at the request's deadline."""

    data: bytes
    min_side: int | None
    held_bytes: int  # what the worker's decode will hold: taken from the memory budget while it runs
    work: int


class MemoryBudget:
    """A weighted semaphore over bytes: bounds the memory concurrent decodes hold at once.

    Each decode takes its header's estimate (cascade/decode_cost.py), whatever its format, mode and bit depth. An
    image estimated above the whole budget takes all of it (it decodes alone) rather than never.
    """

    def __init__(self, total_bytes: int) -> None:
        self.total = total_bytes
        self.free = total_bytes
        self._cond = threading.Condition()

    def acquire(self, amount: int, until_s: float) -> int:
        """Take `amount` bytes (capped at the total) before the monotonic time `until_s`; returns what was taken."""
        want = min(amount, self.total)
        with self._cond:
            while self.free < want:
                left = until_s - time.monotonic()
                if left <= 0:
                    raise DecodeBusy(f"no decode memory free for {amount} bytes before the deadline")
                self._cond.wait(left)
            self.free -= want
        return want

    def release(self, taken: int) -> None:
        with self._cond:
            self.free += taken
            self._cond.notify_all()

    def close(self) -> None:
        """Let every waiter through now: the engine is stopping and waits for its decode threads."""
        with self._cond:
            self.total = self.free = 1 << 62
            self._cond.notify_all()


def decode_payload(payload: str | bytes, limits: DecodeConfig) -> bytes:
    """base64 text -> image bytes, refusing oversize or malformed payloads."""
    if not payload:
        raise DecodeError("image: empty payload")
    if len(payload) > limits.max_payload_bytes:
        raise DecodeError(f"image: payload of {len(payload)} bytes exceeds the limit of {limits.max_payload_bytes}")
    try:
        # pybase64 (SIMD): ~3 us for a 640x480 JPEG's payload where the standard library's binascii took ~95 us,
        # all of it holding the GIL: under load that was the largest single share of the request path's GIL time.
        # It refuses all that `base64.b64decode(validate=True)` refuses, and surplus "=" after a complete group
        # besides, which no encoder writes (tests/unit/test_decode_base64.py).
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"image: invalid base64 ({exc})") from exc


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_header(data: bytes, formats: Sequence[str]) -> Image.Image:
    """Parse only the header, with only the accepted formats' plugins (no probing, no patched opener)."""
    prefix = data[:16]
    for name in formats:
        factory, accept = Image.OPEN[name]
        verdict = True if accept is None else accept(prefix)
        if not verdict or isinstance(verdict, str):  # a string is Pillow's "almost, but no" warning
            continue
        try:
            return factory(io.BytesIO(data), "")  # type: ignore[no-any-return]
        except Exception as exc:
            raise DecodeError(f"image: unreadable {name} header ({type(exc).__name__}: {exc})") from exc
    raise DecodeError(f"image: not a readable image of an accepted format ({', '.join(formats)})")


def _checked_header(data: bytes, limits: DecodeConfig) -> tuple[Image.Image, bool, DecodeWork]:
    """The opened header, whether the image is over `max_pixels` (to downscale) and its decoding work;
    DecodeError (DecodeRefused for work over the limits) for refusals."""
    if data.startswith(b"\xff\xd8\xff") and "JPEG" in limits.formats:
        # Before Pillow sees it: its header parser reads fill and junk bytes one at a time (cascade/jpeg_header.py).
        problem = header_problem(data)
        if problem is not None:
            raise DecodeRefused("jpeg_header", problem)
    image = open_header(data, limits.formats)
    width, height = image.size
    pixels = width * height
    problem = None
    if width < 1 or height < 1:
        problem = f"image: empty image {width}x{height}"
    elif pixels > limits.max_decode_pixels:
        problem = f"image: {width}x{height} exceeds the hard limit of {limits.max_decode_pixels} pixels"
    elif pixels > limits.max_pixels and limits.oversize == "reject":
        problem = f"image: {width}x{height} exceeds the limit of {limits.max_pixels} pixels"
    if problem is not None:
        image.close()
        raise DecodeError(problem)
    try:
        work = decode_work(image, data, limits)
    except DecodeError:
        image.close()
        raise
    return image, pixels > limits.max_pixels, work


def decode_image(
    data: bytes,
    limits: DecodeConfig,
    min_side: int | None = None,
    budget: MemoryBudget | None = None,
    until_s: float | None = None,
) -> Decoded:
    """Image bytes -> upright RGB array, within the configured format, pixel, work and memory limits.

    With `min_side`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both
    sides at least `min_side`: the experts resize to their inputs anyway, and a 640x480 frame for a
    224 model decodes ~3x faster and moves a quarter of the bytes to the GPU. With `budget`, the
    decode waits (until `until_s`) for its estimated bytes to fit in the budget; DecodeBusy if they never do.
    """
    decoded = decode_or_isolate(data, limits, min_side, budget, until_s)
    assert isinstance(decoded, Decoded)
    return decoded


def decode_or_isolate(
    data: bytes,
    limits: DecodeConfig,
    min_side: int | None = None,
    budget: MemoryBudget | None = None,
    until_s: float | None = None,
    isolate_above: int | None = None,
) -> Decoded | HeavyImage:
    """`decode_image`, or, for an image whose estimated work is over `isolate_above`, the checked HeavyImage."""
    image, downscale, work = _checked_header(data, limits)
    return _decode_pixels(image, data, limits, downscale, work, min_side, budget, until_s, isolate_above)


def decode_or_defer(
    data: bytes,
    limits: DecodeConfig,
    min_side: int | None = None,
    budget: MemoryBudget | None = None,
    until_s: float | None = None,
    isolate_above: int | None = None,
) -> Decoded | DeviceJpeg | HeavyImage:
    """`decode_image`'s checks, then a JPEG the device decoder serves as well as PIL left encoded; else pixels.

    Left to PIL (docs/decoding.md): other formats; images over `max_pixels` (downscaled here) or over
    `device_max_pixels` (the reduced DCT decode reads 1/64 of a 4000x3000 frame's pixels for a 224 model,
    where the device would hold the whole frame in the batch); progressive JPEGs (nvJPEG decodes those one
    at a time with its Huffman stage on the host, inside the expert's batch, where PIL decodes them in
    parallel in the decode pool); CMYK/YCCK and untransformed-RGB JPEGs, whose colours nvJPEG does not convert
    as libjpeg does; JPEGs of more than one scan. Over `isolate_above` work: a HeavyImage (`decode_or_isolate`).
    """
    image, downscale, work = _checked_header(data, limits)
    deferred = _deferred(image, downscale, work, data, limits, min_side)
    if deferred is not None:
        return deferred
    return _decode_pixels(image, data, limits, downscale, work, min_side, budget, until_s, isolate_above)


def device_jpeg_or_none(data: bytes, limits: DecodeConfig, min_side: int | None = None) -> DeviceJpeg | None:
    """`decode_or_defer` without the host decode: the checked JPEG left encoded, or None where it needs PIL.

    Reads the header alone (no pixels), so cheap enough for the engine's loop (cascade/request_image.py): a plain
    baseline JPEG by walking its markers (cascade/jpeg_header.py), anything else with Pillow.
    """
    plain = plain_jpeg(data) if "JPEG" in limits.formats else None
    if plain is not None:
        pixels = plain.width * plain.height
        if pixels <= limits.max_pixels and pixels <= limits.device_max_pixels:  # else Pillow's checks say why
            return DeviceJpeg(data, (plain.width, plain.height), 1, limits, min_side)
    image, downscale, work = _checked_header(data, limits)
    with image:
        return _deferred(image, downscale, work, data, limits, min_side)


def _deferred(image: Image.Image, downscale: bool, work: DecodeWork, data: bytes, limits: DecodeConfig,
              min_side: int | None) -> DeviceJpeg | None:
    width, height = image.size
    if (
        image.format == "JPEG"
        and not downscale
        and width * height <= limits.device_max_pixels
        and image.mode in ("RGB", "L")
        and not image.info.get("progressive")
        and work.scans == 1  # several scans mean a full-size coefficient buffer and a pass each
        and image.info.get("adobe_transform") != 0  # 0: RGB stored as is, not YCbCr
    ):
        orientation = orientation_of(image)
        image.close()
        return DeviceJpeg(data, (width, height), orientation, limits, min_side)
    return None


def _decode_pixels(
    image: Image.Image,
    data: bytes,
    limits: DecodeConfig,
    downscale: bool,
    work: DecodeWork,
    min_side: int | None,
    budget: MemoryBudget | None,
    until_s: float | None,
    isolate_above: int | None = None,
) -> Decoded | HeavyImage:
    width, height = image.size
    pixels = width * height
    scale = (limits.max_pixels / pixels) ** 0.5 if downscale else 1.0
    target = (max(1, int(width * scale)), max(1, int(height * scale)))
    orientation = orientation_of(image)
    if image.format == "JPEG":
        if downscale:
            image.draft("RGB", target)  # the codec decodes at 1/2, 1/4 or 1/8 scale: far less memory
        elif min_side and limits.reduce_jpeg:
            image.draft("RGB", (min_side, min_side))
    held = image.size  # after draft: what the decoder will actually allocate
    out = target if downscale else held
    estimate = held_bytes(image, work, held, out, orientation)
    if isolate_above is not None and work.samples > isolate_above:
        image.close()
        return HeavyImage(data, min_side, estimate, work.samples)
    until_s = until_s if until_s is not None else time.monotonic() + 60.0
    try:
        taken = budget.acquire(estimate, until_s) if budget is not None else 0
    except DecodeBusy:
        image.close()
        raise
    try:
        array = upright_rgb(image, target if downscale else None, orientation)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"image: corrupt image data ({type(exc).__name__}: {exc})") from exc
    finally:
        image.close()
        if budget is not None:
            budget.release(taken)
    return Decoded(
        image=array, encoded=data, sha256=hash_bytes(data), original_size=(width, height), downscaled=downscale
    )


def decode(payload: str | bytes, limits: DecodeConfig) -> Decoded:
    """base64 payload -> checked RGB array (raises DecodeError with a message fit for the caller)."""
    return decode_image(decode_payload(payload, limits), limits)
