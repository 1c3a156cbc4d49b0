"""Safe decoding: clear refusals, downscaling within limits, any aspect ratio."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from cascade.config import DecodeConfig
from cascade.decode import DecodeError, decode


def encoded(width: int, height: int, fmt: str = "JPEG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_decode_to_rgb_of_the_sent_size(fmt):
    result = decode(encoded(300, 100, fmt), DecodeConfig())
    assert result.image.shape == (100, 300, 3) and result.image.dtype == np.uint8
    assert not result.downscaled and result.original_size == (300, 100)


def test_grayscale_and_alpha_become_rgb():
    for mode in ("L", "RGBA"):
        buffer = io.BytesIO()
        Image.new(mode, (40, 30)).save(buffer, format="PNG")
        assert decode(base64.b64encode(buffer.getvalue()), DecodeConfig()).image.shape == (30, 40, 3)


def test_oversize_images_are_downscaled_under_the_cap_or_refused():
    limits = DecodeConfig(max_pixels=100_000, max_decode_pixels=10_000_000)
    for fmt in ("JPEG", "PNG"):
        result = decode(encoded(2000, 1000, fmt), limits)
        h, w, _ = result.image.shape
        assert h * w <= 100_000 and result.downscaled and abs(w / h - 2.0) < 0.05
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(encoded(2000, 1000), DecodeConfig(max_pixels=100_000, oversize="reject"))
    with pytest.raises(DecodeError, match="hard limit"):
        decode(encoded(4000, 3000), DecodeConfig(max_pixels=100_000, max_decode_pixels=1_000_000))


@pytest.mark.parametrize(
    ("payload", "message"),
    [("", "empty"), ("@@@", "invalid base64"), (base64.b64encode(b"text").decode(), "not a readable image")],
)
def test_bad_payloads_say_why(payload, message):
    with pytest.raises(DecodeError, match=message):
        decode(payload, DecodeConfig())


def test_payload_size_and_format_limits():
    with pytest.raises(DecodeError, match="exceeds the limit of 2048"):
        decode("A" * 4096, DecodeConfig(max_payload_bytes=2048))
    with pytest.raises(DecodeError, match=r"accepted format \(JPEG\)"):
        decode(encoded(10, 10, "PNG"), DecodeConfig(formats=["JPEG"]))


def test_truncated_image_data_is_refused():
    raw = base64.b64decode(encoded(200, 200, "PNG"))
    with pytest.raises(DecodeError):
        decode(base64.b64encode(raw[: len(raw) // 2]), DecodeConfig())


def test_jpegs_decode_at_the_smallest_scale_that_covers_the_experts():
    from cascade.decode import decode_image, decode_payload

    limits = DecodeConfig()
    jpeg = decode_payload(encoded(1280, 720), limits)
    reduced = decode_image(jpeg, limits, min_side=224)
    assert reduced.image.shape == (360, 640, 3) and reduced.original_size == (1280, 720)
    assert decode_image(jpeg, limits, min_side=400).image.shape == (720, 1280, 3)  # 1/2 would give 360 < 400
    assert decode_image(jpeg, DecodeConfig(reduce_jpeg=False), min_side=224).image.shape == (720, 1280, 3)
    png = decode_payload(encoded(1280, 720, "PNG"), limits)
    assert decode_image(png, limits, min_side=224).image.shape == (720, 1280, 3)
