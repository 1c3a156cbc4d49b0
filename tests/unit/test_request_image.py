"""A request's image and its transitions (cascade/request_image.py), outside the engine.

PAYLOAD -> HASHED, DEVICE_JPEG or PIXELS (check), HASHED -> DEVICE_JPEG or PIXELS (request), DEVICE_JPEG -> PIXELS
(host_pixels); on the loop or in the decode threads or a worker process; and every failure leaves the image as it
was: an undecodable payload, a decode refused from the header's cost, no decode capacity before the deadline, a
deadline that cuts a step short, host pixels that cannot be made after a device JPEG. Real decodes, real threads.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from cascade.cache import ResultCache
from cascade.config import DecodeConfig
from cascade.decode import DecodeBusy, DecodeError, DecodeRefused, DeviceJpeg, decode_image, hash_bytes
from cascade.request import Result, Status
from cascade.request_image import ImageDecoders, RequestImage, Stage
from cascade.serving import ServingCascade
from sn72_lab.hostile_jpeg import many_scans_jpeg
from tests.factories.engine import cascade_config, expert_config, make_job
from tests.factories.jpegs import jpeg_bytes, photo, truncated

MIN_SIDE = 224


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The decode threads, counting the steps handed to them."""

    def __init__(self) -> None:
        super().__init__(2, thread_name_prefix="test-decode")
        self.hops = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.hops += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def executor() -> Iterator[CountingExecutor]:
    pool = CountingExecutor()
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def decoders_of(executor: CountingExecutor, inline_max_chars: int = 1 << 20, **limits: Any) -> ImageDecoders:
    return ImageDecoders(DecodeConfig(**limits), executor, 2, inline_max_chars, ResultCache(16, 60.0))


def serving(defer_jpegs: bool) -> ServingCascade:
    cascade = ServingCascade.empty(cascade_config([[expert_config("a")]]))
    cascade.defer_jpegs, cascade.decode_min_side = defer_jpegs, MIN_SIDE
    return cascade


def image_of(decoders: ImageDecoders, data: bytes, defer_jpegs: bool = False, budget_s: float = 10.0,
             on: ServingCascade | None = None) -> RequestImage:
    job = make_job(base64.b64encode(data).decode(), budget_s=budget_s)
    return decoders.image(job, on or serving(defer_jpegs))


def pil_pixels(data: bytes) -> np.ndarray:
    return decode_image(data, DecodeConfig(), MIN_SIDE).image


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


JPEG = jpeg_bytes(photo(480, 640), orientation=6)


# -- the transitions --------------------------------------------------------------------------------------------

def test_without_a_device_decoder_check_makes_the_pixels_in_one_decode_thread_hop(executor):
    decoders = decoders_of(executor)
    image = image_of(decoders, JPEG)
    assert image.stage is Stage.PAYLOAD
    run(image.check())
    assert image.stage is Stage.PIXELS and executor.hops == 1
    assert image.data == JPEG and image.hash == hash_bytes(JPEG) and image.size == (640, 480)
    request = run(image.request())
    assert executor.hops == 1 and request.jpeg is None
    assert np.array_equal(request.image, pil_pixels(JPEG)) and request.image_hash == image.hash


def test_a_small_jpeg_for_the_device_is_checked_on_the_loop_and_left_encoded(executor):
    decoders = decoders_of(executor)
    image = image_of(decoders, JPEG, defer_jpegs=True)
    run(image.check())
    assert image.stage is Stage.DEVICE_JPEG and executor.hops == 0
    assert isinstance(image.jpeg, DeviceJpeg) and image.jpeg.orientation == 6 and image.size == (640, 480)
    request = run(image.request())
    assert request.image is None and request.jpeg is image.jpeg and executor.hops == 0
    assert image.probe() is image.jpeg


def test_a_jpeg_over_the_inline_size_is_checked_in_a_decode_thread_and_still_left_encoded(executor):
    decoders = decoders_of(executor, inline_max_chars=len(base64.b64encode(JPEG)) - 1)
    image = image_of(decoders, JPEG, defer_jpegs=True)
    run(image.check())
    assert image.stage is Stage.DEVICE_JPEG and executor.hops == 1


def test_a_jpeg_the_loop_finds_needs_pil_is_decoded_in_the_pool_when_the_request_computes(executor):
    progressive = jpeg_bytes(photo(480, 640), progressive=True)
    image = image_of(decoders_of(executor), progressive, defer_jpegs=True)
    run(image.check())
    assert image.stage is Stage.HASHED and executor.hops == 0 and image.size is None
    request = run(image.request())
    assert image.stage is Stage.PIXELS and executor.hops == 1 and image.size == (640, 480)
    assert np.array_equal(request.image, pil_pixels(progressive))


@pytest.mark.parametrize("where", ["cache", "coalescer"])
def test_a_likely_repeat_is_hashed_only_and_decoded_if_it_computes_after_all(executor, where):
    decoders = decoders_of(executor)
    on = serving(defer_jpegs=False)
    if where == "cache":
        decoders.cache.put(hash_bytes(JPEG), Result(0, 0.9, Status.CONFIDENT, 1))
    else:
        on.coalescer.own(hash_bytes(JPEG), time.monotonic() + 10)
    image = image_of(decoders, JPEG, on=on)
    run(image.check())
    assert image.stage is Stage.HASHED and image.hash == hash_bytes(JPEG) and executor.hops == 1
    request = run(image.request())
    assert image.stage is Stage.PIXELS and executor.hops == 2
    assert np.array_equal(request.image, pil_pixels(JPEG))


def test_a_level_that_needs_host_pixels_after_a_device_jpeg_gets_them_once(executor):
    class Level:
        def __init__(self, needs: bool) -> None:
            self.needs = needs

        def needs_pixels(self, chosen: dict[str, Any]) -> bool:
            return self.needs

    image = image_of(decoders_of(executor), JPEG, defer_jpegs=True)
    run(image.check())
    request = run(image.request())
    assert not image.needs_host_pixels(Level(False), {})  # type: ignore[arg-type]
    assert image.needs_host_pixels(Level(True), {})  # type: ignore[arg-type]
    run(image.host_pixels())
    assert image.stage is Stage.PIXELS and executor.hops == 1
    assert image.jpeg is not None  # experts that decode it themselves still take the JPEG
    assert request.image is image.pixels and np.array_equal(image.pixels, pil_pixels(JPEG))
    assert not image.needs_host_pixels(Level(True), {})  # type: ignore[arg-type]
    assert image.probe() is image.pixels


# -- failures leave the image as it was ---------------------------------------------------------------------------

@pytest.mark.parametrize("defer_jpegs", [False, True])
@pytest.mark.parametrize("payload", ["not base64!", base64.b64encode(b"\x00" * 100).decode(),
                                     base64.b64encode(JPEG[:20] + b"\x00" * 40).decode()])
def test_an_undecodable_payload_is_refused_and_leaves_the_payload_as_it_was(executor, payload, defer_jpegs):
    decoders = decoders_of(executor)
    image = decoders.image(make_job(payload, budget_s=10), serving(defer_jpegs))
    with pytest.raises(DecodeError):
        run(image.check())
    assert image.stage is Stage.PAYLOAD and image.data is None and image.hash is None


@pytest.mark.parametrize("defer_jpegs", [False, True])
def test_a_decode_whose_header_says_it_costs_too_much_is_refused_before_any_pixel(executor, defer_jpegs):
    costly = many_scans_jpeg(2000, 2000, 1000)
    image = image_of(decoders_of(executor), costly, defer_jpegs=defer_jpegs)
    began = time.perf_counter()
    with pytest.raises(DecodeRefused, match="scans"):
        run(image.check())
    assert time.perf_counter() - began < 1.0
    assert image.stage is Stage.PAYLOAD


def test_no_decode_thread_free_before_the_deadline_is_busy_not_refused(executor):
    decoders = decoders_of(executor)
    for i in range(2):
        assert decoders.threads.gate.try_take(f"other{i}")  # every decode thread is someone else's
    image = image_of(decoders, JPEG, budget_s=0.2)
    with pytest.raises(DecodeBusy):
        run(image.check())
    assert image.stage is Stage.PAYLOAD and executor.hops == 0


def test_no_decode_memory_free_before_the_deadline_is_busy_in_each_step(executor):
    decoders = decoders_of(executor)
    taken = decoders.budget.acquire(decoders.budget.total, time.monotonic() + 10)
    try:
        pixels_first = image_of(decoders, JPEG, budget_s=0.2)
        with pytest.raises(DecodeBusy):
            run(pixels_first.check())
        assert pixels_first.stage is Stage.PAYLOAD

        device_first = image_of(decoders, JPEG, defer_jpegs=True, budget_s=0.3)
        run(device_first.check())  # the header alone: no memory taken
        request = run(device_first.request())
        with pytest.raises(DecodeBusy):
            run(device_first.host_pixels())
        assert device_first.stage is Stage.DEVICE_JPEG and request.image is None
    finally:
        decoders.budget.release(taken)


def test_a_deadline_that_cuts_a_step_short_leaves_the_image_as_it_was(executor):
    decoders = decoders_of(executor)
    for i in range(2):
        assert decoders.threads.gate.try_take(f"other{i}")
    image = image_of(decoders, JPEG, budget_s=10)

    async def cut() -> None:
        async with asyncio.timeout(0.1):
            await image.check()

    with pytest.raises(TimeoutError):
        run(cut())
    assert image.stage is Stage.PAYLOAD


def test_host_pixels_that_no_decoder_can_make_after_a_device_jpeg_are_refused(executor):
    broken = truncated(jpeg_bytes(photo(480, 640)))  # the header passes; the scan is gone
    image = image_of(decoders_of(executor), broken, defer_jpegs=True)
    run(image.check())
    request = run(image.request())
    assert image.stage is Stage.DEVICE_JPEG
    with pytest.raises(DecodeError, match="corrupt"):
        run(image.host_pixels())
    assert image.stage is Stage.DEVICE_JPEG and request.image is None


# -- costly images: a worker process ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_costly_image_is_decoded_in_a_worker_process_and_a_broken_one_refused_there(executor):
    decoders = decoders_of(executor, isolated_workers=1, isolate_above_work=0)
    assert decoders.isolated is not None
    try:
        image = image_of(decoders, JPEG)
        run(image.check())
        assert image.stage is Stage.PIXELS and image.size == (640, 480) and decoders.isolated.pids()
        assert np.array_equal(image.pixels, pil_pixels(JPEG))
        assert decoders.budget.free == decoders.budget.total  # the worker's memory given back

        broken = image_of(decoders, truncated(jpeg_bytes(photo(480, 640))))
        with pytest.raises(DecodeError):
            run(broken.check())
        assert broken.stage is Stage.PAYLOAD
    finally:
        decoders.isolated.close()
