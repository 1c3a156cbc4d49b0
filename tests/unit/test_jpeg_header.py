"""The engine loop's fast JPEG header check (cascade/jpeg_header.py) against Pillow's reading of the same bytes.

The walker may say "not plain" (None) to anything: the caller then reads the header with Pillow. What it must
never do is accept a file Pillow refuses or reads differently. Checked on generated JPEGs of every kind the
tests make (baseline, progressive, grey, CMYK, untransformed RGB, EXIF, ICC, comments) and on those files with
bytes of their headers overwritten or cut short.
"""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cascade.config import DecodeConfig
from cascade.decode import DecodeError, DeviceJpeg, decode_or_defer, device_jpeg_or_none
from cascade.jpeg_header import plain_jpeg
from tests.factories.jpegs import jpeg_bytes, photo, with_declared_size

LIMITS = DecodeConfig()


def pillow_reading(data: bytes) -> DeviceJpeg | str:
    """What the Pillow path makes of `data`: the JPEG left for the device, else why not ("pixels", "refused")."""
    try:
        out = decode_or_defer(data, LIMITS, 224)
    except DecodeError:
        return "refused"
    return out if isinstance(out, DeviceJpeg) else "pixels"


def agrees_with_pillow(data: bytes) -> None:
    plain = plain_jpeg(data)
    if plain is None:
        return
    reading = pillow_reading(data)
    assert isinstance(reading, DeviceJpeg), f"the walker accepted what Pillow gives {reading!r}"
    assert reading.size == (plain.width, plain.height) and reading.orientation == 1


def saved(mode: str, size: tuple[int, int], **options: object) -> bytes:
    image = Image.fromarray(photo(size[1], size[0])).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:2", "4:2:0"])
def test_plain_baseline_jpegs_are_read_with_their_size(subsampling):
    for data, size, components in ((jpeg_bytes(photo(480, 640), subsampling=subsampling), (640, 480), 3),
                                   (jpeg_bytes(photo(37, 53), grey=True), (53, 37), 1)):
        plain = plain_jpeg(data)
        assert plain is not None and (plain.width, plain.height) == size and plain.components == components
        agrees_with_pillow(data)


@pytest.mark.parametrize(("why", "data"), [
    ("progressive", jpeg_bytes(photo(48, 64), progressive=True)),
    ("EXIF orientation (Pillow reads it)", jpeg_bytes(photo(48, 64), orientation=6)),
    ("RGB stored without YCbCr", jpeg_bytes(photo(48, 64), keep_rgb=True, subsampling="4:4:4")),
    ("CMYK", saved("CMYK", (64, 48))),
    ("not a JPEG", b"\x89PNG\r\n\x1a\n" + bytes(64)),
    ("cut before the scan", jpeg_bytes(photo(48, 64))[:120]),
])
def test_what_is_not_plain_is_left_to_pillow(why, data):
    assert plain_jpeg(data) is None, why


def segment_at(data: bytes, marker: bytes) -> int:
    """Where the first segment with `marker` (e.g. b"\\xff\\xc0") starts."""
    return data.index(marker, 2)


def with_frame_byte(data: bytes, offset: int, value: int) -> bytes:
    """The frame header (SOF0) with the byte `offset` into its body set to `value` (0: precision, 5: components)."""
    at = segment_at(data, b"\xff\xc0") + 4 + offset
    return data[:at] + bytes([value]) + data[at + 1 :]


def with_stray_table_byte(data: bytes) -> bytes:
    """A quantization segment one byte longer than its tables, the markers after it still in step."""
    at = segment_at(data, b"\xff\xdb")
    length = int.from_bytes(data[at + 2 : at + 4], "big")
    end = at + 2 + length
    return data[: at + 2] + (length + 1).to_bytes(2, "big") + data[at + 4 : end] + b"\x00" + data[end:]


@pytest.mark.parametrize(("why", "damage"), [
    ("12-bit samples", lambda data: with_frame_byte(data, 0, 12)),
    ("four components in a three-component frame", lambda data: with_frame_byte(data, 5, 4)),
    ("two components", lambda data: with_frame_byte(data, 5, 2)),
    ("a quantization segment its tables do not fill", with_stray_table_byte),
    ("a second frame", lambda data: data[:segment_at(data, b"\xff\xda")] + data[segment_at(data, b"\xff\xc0"):]),
])
def test_headers_damaged_where_pillow_looks_are_not_accepted(why, damage):
    damaged = damage(jpeg_bytes(photo(40, 56)))
    assert plain_jpeg(damaged) is None, why
    agrees_with_pillow(damaged)


def test_a_bomb_header_is_read_by_the_walker_and_refused_by_the_checks():
    bomb = with_declared_size(jpeg_bytes(photo(48, 64)), 60_000, 60_000)
    plain = plain_jpeg(bomb)
    assert plain is not None and (plain.width, plain.height) == (60_000, 60_000)
    with pytest.raises(DecodeError, match="exceeds the hard limit"):
        device_jpeg_or_none(bomb, LIMITS, 224)


def test_the_loop_check_takes_the_walkers_answer_for_plain_files_and_pillows_for_the_rest():
    plain = device_jpeg_or_none(jpeg_bytes(photo(48, 64)), LIMITS, 224)
    assert isinstance(plain, DeviceJpeg) and plain.size == (64, 48) and plain.orientation == 1
    turned = device_jpeg_or_none(jpeg_bytes(photo(48, 64), orientation=6), LIMITS, 224)
    assert isinstance(turned, DeviceJpeg) and turned.orientation == 6  # Pillow read the EXIF block
    assert device_jpeg_or_none(jpeg_bytes(photo(48, 64), progressive=True), LIMITS, 224) is None
    too_big = jpeg_bytes(photo(48, 64))
    assert device_jpeg_or_none(too_big, DecodeConfig(device_max_pixels=1024), 224) is None  # PIL decodes it


_KINDS = st.sampled_from(["RGB", "L", "CMYK"])
_SIDES = st.integers(1, 96)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=_KINDS, width=_SIDES, height=_SIDES, quality=st.integers(5, 100), subsampling=st.integers(0, 2),
       progressive=st.booleans(), orientation=st.integers(1, 8), icc=st.booleans(), comment=st.booleans())
def test_generated_jpegs_are_read_as_pillow_reads_them(mode, width, height, quality, subsampling, progressive,
                                                       orientation, icc, comment):
    options: dict[str, object] = {"quality": quality, "progressive": progressive}
    if mode != "L":
        options["subsampling"] = subsampling
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    if icc:
        options["icc_profile"] = b"\0" * 300
    if comment:
        options["comment"] = b"roadwork?"
    data = saved(mode, (width, height), **options)
    agrees_with_pillow(data)
    if mode != "CMYK" and not progressive and orientation == 1:  # the plain case is read by the walker
        assert plain_jpeg(data) is not None


_BASES = [jpeg_bytes(photo(40, 56)), jpeg_bytes(photo(40, 56), grey=True),
          saved("RGB", (56, 40), icc_profile=b"\0" * 64, comment=b"x")]


@settings(max_examples=400, deadline=None)
@given(base=st.sampled_from(_BASES), edits=st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)),
                                                    min_size=1, max_size=4), cut=st.integers(0, 900))
def test_damaged_headers_are_never_accepted_where_pillow_disagrees(base, edits, cut):
    data = bytearray(base)
    for at, value in edits:
        if at < len(data):
            data[at] = value
    damaged = bytes(data[: max(cut, 4)] if cut < 700 else data)
    agrees_with_pillow(damaged)  # and never raises
