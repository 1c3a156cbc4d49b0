"""What the outside attack of 2026-12-04 broke (a header walk of seconds, 1-byte chunks, a 1M-key body), built so
the catalogue keeps them refused: JPEG headers padded with fill bytes or empty markers, and a signed request sent
as a stream of 1-byte chunks."""

from __future__ import annotations

from sn72_lab.hostile import payloads
from sn72_lab.hostile.model import Context
from sn72_lab.hostile.odd_requests import _replace_length, _signed_parts


def fill_byte_jpeg(fill: int = 1 << 20) -> bytes:
    """A small JPEG with `fill` bytes of 0xFF after its start marker: Pillow reads fill bytes one at a time (9 MB
    of them took ~3 s of Python each before the header walk was bounded)."""
    jpeg = payloads.jpeg(21)
    return jpeg[:2] + b"\xff" * fill + jpeg[2:]


def empty_comment_jpeg(markers: int = 200_000) -> bytes:
    """A small JPEG with `markers` empty COM segments before its frame (2.2M took ~2 s)."""
    jpeg = payloads.jpeg(22)
    return jpeg[:2] + b"\xff\xfe\x00\x02" * markers + jpeg[2:]


def one_byte_chunks(context: Context) -> bytes:
    """A signed request whose body comes as 1-byte chunks (each parsed on the HTTP loop before the fix)."""
    head, body = _signed_parts(context)
    chunks = b"".join(b"1\r\n%c\r\n" % byte for byte in body[:4096]) + b"0\r\n\r\n"
    return _replace_length(head, b"Transfer-Encoding: chunked") + chunks
