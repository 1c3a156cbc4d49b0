"""Image payloads an attacker (or an odd camera) sends: bombs, odd modes, animations, lies about the format.

Everything is built locally and cheaply: the large PNGs are written with streamed, repeated deflate blocks, so a
20000x20000 image (1.2 GB of pixels) costs a few MB and well under a second, never the pixels themselves.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ROWS_PER_BLOCK = 32  # rows compressed once, then repeated: identical input after a full flush gives identical bytes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def solid_png(width: int, height: int, colour: tuple[int, ...] = (90, 16, 128), bit_depth: int = 8) -> bytes:
    """A one-colour PNG of any size (RGB, or grey for a 1-tuple), without allocating its pixels.

    Rows are identical, so a block of rows is deflated once and repeated: after a Z_FULL_FLUSH the compressor starts
    from an empty window and emits the same bytes for the same input. The zlib trailer (adler32) is computed over the
    whole virtual stream, so any decoder that reads to the end finds a valid file.
    """
    channels = len(colour)
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    sample = b"".join(int(c).to_bytes(bit_depth // 8, "big") for c in colour)
    row = b"\x00" + sample * width  # filter type 0 (None)
    block_rows = min(_ROWS_PER_BLOCK, height)
    block = row * block_rows
    compressor = zlib.compressobj(9)
    head = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)  # the block after a full flush
    blocks, rest = divmod(height, block_rows)
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(block, adler)
    parts = [head, repeated * (blocks - 1)]
    if rest:
        tail = zlib.compressobj(9)
        # A fresh compressor after a full flush is equivalent: drop its 2-byte zlib header.
        parts.append((tail.compress(row * rest) + tail.flush(zlib.Z_FULL_FLUSH))[2:])
        adler = zlib.adler32(row * rest, adler)
    parts.append(b"\x03\x00")  # an empty final block (fixed Huffman, end-of-block)
    parts.append(struct.pack(">I", adler))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def photo(seed: int = 0, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A smooth random RGB picture (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg(seed: int = 0, size: tuple[int, int] = (96, 64)) -> bytes:
    return encode(photo(seed, size), "JPEG", quality=90)


def truncated_jpeg(seed: int = 0) -> bytes:
    data = jpeg(seed, (320, 240))
    return data[: len(data) // 2]


def cmyk_jpeg() -> bytes:
    return encode(photo(1).convert("CMYK"), "JPEG", quality=90)


def grey16_png() -> bytes:
    ramp = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")  # mode I;16: a 16-bit greyscale PNG


def rgb48_png() -> bytes:
    """16 bits per channel RGB (Pillow cannot write it; cameras and editors do)."""
    return solid_png(64, 48, (40000, 1000, 65535), bit_depth=16)


def palette_png() -> bytes:
    return encode(photo(2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")


def rgba_png() -> bytes:
    image = photo(3).convert("RGBA")
    image.putalpha(128)
    return encode(image, "PNG")


def la_png() -> bytes:
    return encode(photo(4).convert("LA"), "PNG")


def _frames(count: int = 3) -> list[Image.Image]:
    return [photo(10 + i) for i in range(count)]


def animated_png() -> bytes:
    first, *rest = _frames()
    return encode(first, "PNG", save_all=True, append_images=rest, duration=100, loop=0)


def animated_webp() -> bytes:
    first, *rest = _frames()
    return encode(first, "WEBP", save_all=True, append_images=rest, duration=100, loop=0)


def gif() -> bytes:
    first, *rest = _frames()
    return encode(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0)


def heic_like() -> bytes:
    """An ISO-BMFF `ftyp heic` box and some junk: what an iPhone photo looks like to a sniffer."""
    ftyp = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    meta = struct.pack(">I", 40) + b"meta" + bytes(32)
    return ftyp + meta + bytes(range(256)) * 4


ORIENTATION_TAG = 0x0112


def exif_rotated_jpeg(orientation: int = 6, size: tuple[int, int] = (96, 48), mark: int = 16) -> bytes:
    """A JPEG stored `size` (w, h) with a pure red square in its stored top-left corner and an EXIF orientation."""
    array = np.full((size[1], size[0], 3), 200, np.uint8)
    array[:mark, :mark] = (255, 0, 0)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return encode(Image.fromarray(array), "JPEG", quality=95, exif=exif.tobytes())
