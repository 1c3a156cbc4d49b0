"""The distortion module: seeded, deterministic per image, and the shapes validators used."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sn72_tools.client import synthetic_image
from sn72_tools.evaluation import distort


def png(seed: int = 0, size: tuple[int, int] = (320, 200)) -> bytes:
    buffer = io.BytesIO()
    synthetic_image(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", [n for n in distort.DISTORTIONS if n != "native"])
def test_each_distortion_is_deterministic_changes_the_image_and_sends_a_jpeg(name):
    data = png()
    once, again = distort.apply(name, data, seed=1), distort.apply(name, data, seed=1)
    assert once == again and once[:3] == b"\xff\xd8\xff"
    other_seed = distort.apply(name, data, seed=2)
    other_image = distort.apply(name, png(1), seed=1)
    assert other_image != once
    if name not in ("centre-crop-224", "letterbox-224"):  # the geometric ones draw nothing at random
        assert other_seed != once
    plain = np.asarray(Image.open(io.BytesIO(distort.apply("jpeg", data, seed=1))).convert("RGB"), dtype=float)
    assert plain.shape[:2] == (200, 320)


def test_geometry_of_crop_and_letterbox():
    data = png(size=(640, 360))
    crop = Image.open(io.BytesIO(distort.apply("centre-crop-224", data)))
    box = Image.open(io.BytesIO(distort.apply("letterbox-224", data)))
    assert crop.size == box.size == (224, 224)
    pixels = np.asarray(box.convert("RGB"), dtype=int)
    assert pixels[:20].max() < 20 and pixels[-20:].max() < 20  # black bars above and below a wide frame
    assert pixels[112].mean() > 30


def test_native_is_the_stored_bytes_and_bad_input_is_refused():
    data = png()
    assert distort.apply("native", data) is data
    with pytest.raises(ValueError, match="unknown distortion 'fog'"):
        distort.apply("fog", data)
    with pytest.raises(ValueError, match="not a readable image"):
        distort.apply("blur", b"not an image")
