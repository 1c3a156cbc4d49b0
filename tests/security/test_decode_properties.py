"""cascade/decode.py against anything: any bytes give an RGB uint8 array within the limits, or a DecodeError.

Property tests (hypothesis) over raw bytes, base64 text, valid images of every mode and format, and valid images
mutated byte by byte (a short fuzzing run with a fixed number of examples), plus EXIF orientation.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cascade.config import DecodeConfig
from cascade.decode import DecodeError, decode, decode_image
from sn72_lab.hostile import payloads

pytestmark = pytest.mark.security

LIMITS = DecodeConfig(max_payload_bytes=1 << 20, max_pixels=20_000, max_decode_pixels=2_000_000)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Seeds for mutation: every format and mode the miner may meet, accepted or not.
SEEDS = [
    payloads.jpeg(1, (64, 48)), payloads.cmyk_jpeg(), payloads.exif_rotated_jpeg(6), payloads.grey16_png(),
    payloads.rgb48_png(), payloads.palette_png(), payloads.rgba_png(), payloads.la_png(), payloads.animated_png(),
    payloads.animated_webp(), payloads.gif(), payloads.heic_like(), payloads.solid_png(1200, 1200),
    payloads.encode(payloads.photo(5, (40, 30)), "WEBP"), payloads.encode(payloads.photo(6, (40, 30)), "BMP"),
]


def assert_within_limits(data: bytes, limits: DecodeConfig = LIMITS) -> Image.Image | None:
    """The property itself: a Decoded within the limits, or DecodeError, and nothing else."""
    try:
        decoded = decode_image(data, limits)
    except DecodeError as exc:
        assert str(exc), "a refusal says why"
        return None
    image = decoded.image
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3
    height, width = image.shape[:2]
    assert height >= 1 and width >= 1 and height * width <= limits.max_pixels
    return Image.fromarray(image)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite-dimension"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "overwrite-dimension":  # big-endian sizes live in PNG IHDR and JPEG SOF: lie about them
            data[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x01\x86\xa0"]))
    return bytes(data)


@st.composite
def valid_images(draw: st.DrawFn) -> tuple[bytes, tuple[int, int]]:
    fmt, mode = draw(st.sampled_from([("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGB"), ("PNG", "L"),
                                      ("PNG", "P"), ("PNG", "RGBA"), ("PNG", "LA"), ("PNG", "I;16"), ("PNG", "1"),
                                      ("WEBP", "RGB"), ("WEBP", "RGBA")]))
    size = (draw(st.integers(1, 400)), draw(st.integers(1, 300)))
    image = payloads.photo(draw(st.integers(0, 1000)), size)
    image = image.convert("I;16") if mode == "I;16" else image.convert(mode)
    return payloads.encode(image, fmt), size


@PROPERTY
@given(st.binary(max_size=4096))
def test_any_bytes_decode_within_limits_or_are_refused(data):
    assert_within_limits(data)


@PROPERTY
@given(st.one_of(st.text(max_size=512), st.binary(max_size=512)))
def test_any_payload_decodes_within_limits_or_is_refused(payload):
    try:
        decoded = decode(payload, LIMITS)
    except DecodeError:
        return
    assert decoded.image.dtype == np.uint8 and decoded.image.shape[2] == 3


@pytest.mark.slow
@PROPERTY
@given(valid_images())
def test_every_accepted_format_and_mode_decodes(case):
    data, (width, height) = case
    image = assert_within_limits(data)
    assert image is not None, "a valid image of an accepted format was refused"
    if width * height <= LIMITS.max_pixels:
        assert image.size == (width, height)
    else:  # downscaled, keeping the aspect ratio
        assert abs(image.size[0] / image.size[1] - width / height) < 0.1 * max(1.0, width / height) + 2 / image.size[1]


@pytest.mark.slow
@FUZZ
@given(mutated())
def test_fuzz_mutated_images(data):
    assert_within_limits(data)


# Orientation 6 shows the stored image turned 90 degrees clockwise; 8 anticlockwise; 3 upside down.
CORNER = {1: "top-left", 6: "top-right", 3: "bottom-right", 8: "bottom-left"}


@pytest.mark.parametrize("min_side", [None, 16])
@pytest.mark.parametrize("orientation", sorted(CORNER))
def test_exif_orientation_is_applied(orientation, min_side):
    """Stored 96x48 with a red square at its stored top-left; decoded as displayed (JPEG draft or not)."""
    decoded = decode_image(payloads.exif_rotated_jpeg(orientation, (96, 48), mark=16), DecodeConfig(), min_side)
    image = decoded.image
    height, width = image.shape[:2]
    assert (width < height) == (orientation in (6, 8)), f"orientation {orientation} gave {width}x{height}"
    patch = max(2, min(height, width) // 8)
    corners = {"top-left": image[:patch, :patch], "top-right": image[:patch, -patch:],
               "bottom-left": image[-patch:, :patch], "bottom-right": image[-patch:, -patch:]}
    for name, block in corners.items():
        red = block.reshape(-1, 3).mean(axis=0)
        is_red = red[0] > 180 and red[1] < 90 and red[2] < 90
        assert is_red == (name == CORNER[orientation]), f"{name} mean colour {red.round()} (orientation {orientation})"


def test_the_large_seed_is_downscaled_not_refused():
    """The 1200x1200 seed (1.4 MP, under max_decode_pixels) is above max_pixels: downscaled."""
    image = assert_within_limits(payloads.solid_png(1200, 1200))
    assert image is not None and image.size[0] == image.size[1]
    assert np.asarray(image)[0, 0].tolist() == [90, 16, 128]


def test_a_header_that_lies_about_its_size_is_refused_not_decoded():
    data = payloads.solid_png(20000, 20000)
    assert struct.unpack(">II", data[16:24]) == (20000, 20000)  # IHDR width, height
    with pytest.raises(DecodeError, match="limit"):
        decode_image(data, LIMITS)


@pytest.mark.parametrize("make", [payloads.animated_png, payloads.animated_webp], ids=["apng", "webp"])
def test_an_animation_decodes_to_its_first_frame(make):
    decoded = decode_image(make(), DecodeConfig())
    frames = [np.asarray(payloads.photo(10 + i), dtype=float) for i in range(3)]  # payloads._frames
    distances = [float(np.abs(decoded.image.astype(float) - frame).mean()) for frame in frames]
    assert distances[0] < 4.0 and distances[0] < min(distances[1:]) / 4, distances
