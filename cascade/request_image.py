"""One request's image on the request path: its state, and every step that changes it.

`RequestImage` owns what is known of a request's image and decides how each step is done; the lifetime
(cascade/lifetime.py) only asks it for what the next step needs. Its stages, in order:

  PAYLOAD      the base64 text as received
  HASHED       the bytes and their sha256; nothing decoded yet: a likely repeat (the same image answered
               recently or being computed, whose pixels would be wasted), or a JPEG whose header the loop
               checked and found to need PIL
  DEVICE_JPEG  the header checked and the JPEG left encoded for the first level, whose experts decode it on
               their device (docs/decoding.md)
  PIXELS       host pixels (a DEVICE_JPEG keeps its JPEG: experts that decode it themselves still take it)

  check()        PAYLOAD -> HASHED, DEVICE_JPEG or PIXELS
  request()      HASHED -> DEVICE_JPEG or PIXELS (the decode check() skipped), then the `Request` the levels run
  host_pixels()  DEVICE_JPEG -> PIXELS, for a level whose chosen replicas cannot decode the JPEG themselves

Where each step runs (`ImageDecoders`, shared by every request and outliving every cascade):
  - on the engine's loop: base64, hash and header of a small JPEG bound for the device decoder (no pixels);
  - in the decode threads (cascade/decode_pool.py FairThreads, shared by caller, until the deadline): everything
    else, one hop per step, within the decode memory budget;
  - in a killable worker process (IsolatedDecoder): an image whose estimated work is over `isolate_above_work`,
    killed at the request's deadline.
What the bytes are and whether they are acceptable is cascade/decode.py's (pure functions, any thread).

Failures: DecodeError (the image's fault: the request is refused) and DecodeBusy (no decode capacity before the
deadline: the lifetime answers without the image). A step changes the state only once it has succeeded, and only on
the loop: a step that failed, or that the deadline cut short, leaves the image as it was.
"""

from __future__ import annotations

import concurrent.futures
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from cascade.cache import ResultCache
from cascade.config import DecodeConfig
from cascade.decode import (
    Decoded,
    DeviceJpeg,
    HeavyImage,
    MemoryBudget,
    decode_or_defer,
    decode_or_isolate,
    decode_payload,
    device_jpeg_or_none,
    hash_bytes,
)
from cascade.decode_pool import FairThreads, IsolatedDecoder
from cascade.request import Job, Request

if TYPE_CHECKING:
    from cascade.experts.base import ImageInput
    from cascade.levels import Level
    from cascade.scheduler import MicroBatcher
    from cascade.serving import ServingCascade

_JPEG_BASE64 = "/9j/"  # what every JPEG (FF D8 FF) looks like in base64

FirstStep = tuple[bytes, str, Decoded | DeviceJpeg | HeavyImage | None]


class Stage(enum.Enum):
    PAYLOAD = "payload"
    HASHED = "hashed"
    DEVICE_JPEG = "device_jpeg"
    PIXELS = "pixels"


class ImageDecoders:
    """What every request's image is decoded with: decode threads shared by caller, the decode memory budget, the
    worker processes for costly images, and the result cache (to skip the pixels of a likely repeat)."""

    def __init__(self, limits: DecodeConfig, executor: concurrent.futures.Executor, workers: int,
                 inline_max_chars: int, cache: ResultCache, isolated_outcome: Callable[[str], None] | None = None,
                 ) -> None:
        self.limits = limits
        self.threads = FairThreads(executor, workers)
        self.budget = MemoryBudget(limits.budget_bytes)
        self.isolated = IsolatedDecoder(limits, self.budget, isolated_outcome) if limits.isolated_workers else None
        self.isolate_above = limits.isolate_above_work if self.isolated is not None else None
        self.inline_max_chars = inline_max_chars  # base64 characters of a JPEG checked on the loop, at most
        self.cache = cache

    def image(self, job: Job, serving: ServingCascade) -> RequestImage:
        """`job`'s image, to be decoded for `serving` (the cascade the request computes on)."""
        return RequestImage(self, job, serving)


class RequestImage:
    """One request's image (see the module): loop-thread only, but for the steps it hands to a decode thread."""

    __slots__ = ("_request", "data", "decoders", "hash", "job", "jpeg", "pixels", "serving", "size")

    def __init__(self, decoders: ImageDecoders, job: Job, serving: ServingCascade) -> None:
        self.decoders = decoders
        self.job = job
        self.serving = serving
        self.data: bytes | None = None  # the encoded image as received (kept for active learning)
        self.hash: str | None = None
        self.jpeg: DeviceJpeg | None = None
        self.pixels: np.ndarray | None = None  # HxWx3 uint8 RGB, upright
        self.size: tuple[int, int] | None = None  # (width, height) as sent, before orientation and any downscale
        self._request: Request | None = None

    @property
    def stage(self) -> Stage:
        if self.pixels is not None:
            return Stage.PIXELS
        if self.jpeg is not None:
            return Stage.DEVICE_JPEG
        return Stage.HASHED if self.data is not None else Stage.PAYLOAD

    # -- the steps --------------------------------------------------------------------------------
    async def check(self) -> None:
        """PAYLOAD -> base64, hash and, unless the image is a likely repeat, a device JPEG or host pixels."""
        job, decoders = self.job, self.decoders
        payload = job.payload
        if self.serving.defer_jpegs and len(payload) <= decoders.inline_max_chars and payload.startswith(_JPEG_BASE64):
            # A JPEG bound for the device decoder, small enough to check here: base64, hash and header on the loop
            # cost less than the decode pool's round trip (two thread hand-offs, each a wait for the interpreter
            # lock; +32% requests/s with null experts in a worker on two cores, +7% on two H200s:
            # docs/performance.md). Pixels, where PIL must make them, are still made in the pool.
            data, image_hash, first = self._first_step(payload, header_only=True)
            assert not isinstance(first, HeavyImage)  # a header check leaves pixels, costly or not, for later
        else:
            data, image_hash, first = await decoders.threads.run(job.hotkey, job.stake, job.deadline_s,
                                                                 self._first_step, payload)
            if isinstance(first, HeavyImage):
                first = await self._in_worker(first)
        self.data, self.hash = data, image_hash
        self._take(first)

    async def request(self) -> Request:
        """The `Request` the levels run on, with the device JPEG or host pixels: what `check` left undecoded (a
        likely repeat not answered after all, or a JPEG the loop's header check left to PIL) is decoded now."""
        assert self.data is not None and self.hash is not None, "check() first"
        if self.jpeg is None and self.pixels is None:
            job = self.job
            made = await self.decoders.threads.run(job.hotkey, job.stake, job.deadline_s, self._first_pixels,
                                                   self.data)
            self._take(await self._in_worker(made) if isinstance(made, HeavyImage) else made)
        self._request = Request(self.job, self.pixels, self.hash, self.data, jpeg=self.jpeg)
        return self._request

    def needs_host_pixels(self, level: Level, chosen: dict[str, MicroBatcher]) -> bool:
        """Whether `level`'s chosen replicas need host pixels that have not been decoded yet."""
        return self.pixels is None and level.needs_pixels(chosen)

    async def host_pixels(self) -> None:
        """DEVICE_JPEG -> PIXELS (decode pool, or a worker process for a costly image): only requests that reach a
        level whose experts need arrays pay for them."""
        assert self._request is not None and self.data is not None, "request() first"
        job = self.job
        made = await self.decoders.threads.run(job.hotkey, job.stake, job.deadline_s, self._pixels, self.data)
        decoded = await self._in_worker(made) if isinstance(made, HeavyImage) else made
        self.pixels = self._request.image = decoded.image

    def probe(self) -> ImageInput:
        """The image a stale replica re-measures itself on: the pixels, else the device JPEG."""
        image = self.pixels if self.pixels is not None else self.jpeg
        assert image is not None, "request() first"
        return image

    # -- how --------------------------------------------------------------------------------------
    def _take(self, decoded: Decoded | DeviceJpeg | None) -> None:
        if isinstance(decoded, DeviceJpeg):
            self.jpeg, self.size = decoded, decoded.size
        elif decoded is not None:
            self.pixels, self.size = decoded.image, decoded.original_size

    async def _in_worker(self, heavy: HeavyImage) -> Decoded:
        """A costly image's pixels from a worker process (killed if the request's deadline comes first)."""
        job, isolated = self.job, self.decoders.isolated
        assert isolated is not None
        return await isolated.decode(heavy, job.hotkey, job.stake, job.deadline_s)

    def _first_step(self, payload: str, header_only: bool = False) -> FirstStep:
        """Decode thread: base64, hash and (unless the image is a likely repeat) pixels, in one hop.

        One executor round trip per request instead of three: under load every hop is a wait for the
        GIL. The repeat check reads loop-owned state without a lock; a wrong guess costs one more hop.
        `header_only` (on the loop): no pixels; None leaves a JPEG that needs them to the pool, as a repeat.
        """
        limits, serving = self.decoders.limits, self.serving
        data = decode_payload(payload, limits)
        image_hash = hash_bytes(data)
        if self.decoders.cache.contains(image_hash) or image_hash in serving.coalescer:
            return data, image_hash, None
        if header_only:
            return data, image_hash, device_jpeg_or_none(data, limits, serving.decode_min_side)
        return data, image_hash, self._first_pixels(data)

    def _first_pixels(self, data: bytes) -> Decoded | DeviceJpeg | HeavyImage:
        """Decode thread: pixels, or the checked JPEG left encoded where the first level's experts decode it on their
        device, or a costly image left for a worker process."""
        if self.serving.defer_jpegs:
            decoders = self.decoders
            return decode_or_defer(data, decoders.limits, self.serving.decode_min_side, decoders.budget,
                                   self.job.deadline_s, decoders.isolate_above)
        return self._pixels(data)

    def _pixels(self, data: bytes) -> Decoded | HeavyImage:
        decoders = self.decoders
        return decode_or_isolate(data, decoders.limits, self.serving.decode_min_side, decoders.budget,
                                 self.job.deadline_s, decoders.isolate_above)
