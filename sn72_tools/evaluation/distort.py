"""The image conditions validators have used, as one seeded module (the eval uses it; training will too).

docs/protocol.md (Images): centre crop to 224 with rotation/crop/colour/JPEG/noise/blur distortions (Jan 2026),
letterbox (Apr 2026), native resolution with no augmentation (May 2026). Every distortion takes a PIL
image and a numpy Generator and is deterministic given both; `image_rng` seeds one per image, so the
same image is distorted the same way in every run (and the eval's output cache stays valid).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

SIDE = 224
VALIDATOR_JPEG_QUALITY = 75  # PIL's default, which validators use to encode what they send

Distortion = Callable[[Image.Image, np.random.Generator], Image.Image]


def centre_crop(image: Image.Image, rng: np.random.Generator, side: int = SIDE) -> Image.Image:
    """Shorter side to `side`, then the central square (torchvision's Resize + CenterCrop)."""
    width, height = image.size
    scale = side / min(width, height)
    resized = image.resize((max(side, round(width * scale)), max(side, round(height * scale))),
                           Image.Resampling.BILINEAR)
    left = (resized.width - side) // 2
    top = (resized.height - side) // 2
    return resized.crop((left, top, left + side, top + side))


def letterbox(image: Image.Image, rng: np.random.Generator, side: int = SIDE) -> Image.Image:
    """Longer side to `side`, the rest padded black, centred: nothing of the picture is lost."""
    width, height = image.size
    scale = side / max(width, height)
    resized = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(resized, ((side - resized.width) // 2, (side - resized.height) // 2))
    return canvas


def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encoded at a random low JPEG quality (30-70)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(30, 71)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur, radius 0.5-2.0 px."""
    return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))


def noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Additive Gaussian noise, sigma 3-15 grey levels."""
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, float(rng.uniform(3.0, 15.0)), pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def colour_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation each scaled by 0.7-1.3."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(0.7, 1.3)))
    return image


DISTORTIONS: dict[str, Distortion | None] = {
    "native": None,  # the image as stored: no decode, no re-encode
    "centre-crop-224": centre_crop,
    "letterbox-224": letterbox,
    "jpeg": jpeg,
    "blur": blur,
    "noise": noise,
    "colour-jitter": colour_jitter,
}


def image_rng(image_bytes: bytes, distortion: str, seed: int) -> np.random.Generator:
    """A generator for one image under one distortion: the same every run."""
    key = hashlib.sha256(f"{seed}:{distortion}:".encode() + image_bytes).digest()
    return np.random.default_rng(int.from_bytes(key[:8], "little"))


def apply(name: str, image_bytes: bytes, seed: int = 0) -> bytes:
    """The bytes a validator would send for this image under `name`.

    `native` returns the stored bytes unchanged (the engine decodes them, as it would a validator's);
    every other distortion decodes, distorts and encodes a JPEG at PIL's default quality, as
    validators do. Raises ValueError for an unknown name and for bytes that are not an image.
    """
    if name not in DISTORTIONS:
        raise ValueError(f"unknown distortion {name!r}; known: {', '.join(DISTORTIONS)}")
    distortion = DISTORTIONS[name]
    if distortion is None:
        return image_bytes
    try:
        with Image.open(io.BytesIO(image_bytes)) as opened:
            image = opened.convert("RGB")
    except Exception as exc:  # untrusted files: any decoder failure
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from exc
    distorted = distortion(image, image_rng(image_bytes, name, seed))
    buffer = io.BytesIO()
    distorted.convert("RGB").save(buffer, format="JPEG", quality=VALIDATOR_JPEG_QUALITY)
    return buffer.getvalue()
