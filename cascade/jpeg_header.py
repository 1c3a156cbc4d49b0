"""The frame of a plain JPEG, read by walking its markers: the engine loop's fast header check.

Pillow's JPEG plugin reads every segment up to the scan into Python objects (quantization tables as
lists, APP segments into dictionaries, the MPO index): ~25 us per 640x480 frame, and with the
base64 and the hash it was the largest share of the engine loop's time per request (py-spy). What
the device decoder needs to know is much less: one baseline frame, 8-bit, grey or YCbCr, and its
size. `plain_jpeg` reads that and nothing else.

It only ever says yes for the plain case, and a plain file has one scan holding every component of its frame:
libjpeg decodes such a file in one pass and refuses a second scan after it, so its decoding costs what its frame
says. `jpeg_scans` counts the scans of any other JPEG, whose decoding costs a pass over the frame per scan
(the second red-team pass, docs/security.md: 2,000 empty scans over a 6000x6000 frame in 90 KB took ~8 s of decoding).

Anything it does not recognise or finds out of place
(progressive or lossless frames, arithmetic coding, CMYK, 12-bit samples, Adobe's untransformed RGB,
EXIF blocks, whose orientation Pillow reads, MPO indexes, Photoshop blocks, short or overlong segments,
junk between markers) gives None, and
the caller reads the header with Pillow as before: the fast path never accepts what Pillow would
refuse or read differently (tests/unit/test_jpeg_header.py checks both on generated and mutated files).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SOS_MARKER = re.compile(b"\xff\xda")  # a compiled search runs ~4x faster than bytes.find for two bytes
_MAX_SCAN_COMPONENTS = 4  # a scan holds at most four components (ITU T.81 B.2.3)
_MAX_HEADER_SEGMENTS = 1024  # cameras write ~10 segments before the first scan
_STAND_ALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7: markers without a length

_SOI = b"\xff\xd8\xff"
_BASELINE_FRAMES = (0xC0, 0xC1)  # SOF0 baseline, SOF1 extended sequential (Huffman)
_SKIPPED = frozenset({0xC4, 0xDD, 0xFE} | set(range(0xE0, 0xF0)))  # DHT, DRI, COM, APP0-15: read past
_DQT, _SOS, _APP0, _APP1, _APP2, _APP13, _APP14 = 0xDB, 0xDA, 0xE0, 0xE1, 0xE2, 0xED, 0xEE
_READ_BY_PILLOW = frozenset({_APP0, _APP1, _APP2, _APP13, _APP14})  # segments it takes fields from
_MAX_SEGMENTS = 64  # a camera JPEG has ~10 before the scan; more is not a plain JPEG


@dataclass(frozen=True)
class PlainJpeg:
    width: int
    height: int
    components: int  # 1 (grey) or 3 (YCbCr); no EXIF block, so upright as stored


def plain_jpeg(data: bytes) -> PlainJpeg | None:
    """The frame of a plain baseline JPEG, or None where Pillow should read the header (see the module)."""
    if not data.startswith(_SOI):
        return None
    end = len(data)
    pos = 2
    frame: tuple[int, int, int] | None = None
    for _ in range(_MAX_SEGMENTS):
        if pos + 4 > end or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        body, pos = pos + 4, pos + 2 + length
        if length < 2 or pos > end:
            return None
        if marker == _SOS:  # one interleaved scan of every component, or not plain (several scans follow)
            return None if frame is None or length < 3 or data[body] != frame[2] else PlainJpeg(*frame)
        if marker in _BASELINE_FRAMES:
            if frame is not None or length < 8:
                return None
            bits, height, width, components = data[body], data[body + 1] << 8 | data[body + 2], \
                data[body + 3] << 8 | data[body + 4], data[body + 5]
            if bits != 8 or components not in (1, 3) or not width or not height or length != 8 + 3 * components:
                return None
            frame = (width, height, components)
        elif marker == _DQT:
            if not _tables_fit(data, body, pos):
                return None
        elif marker in _SKIPPED:
            if marker in _READ_BY_PILLOW and not _app_is_plain(marker, data[body:pos]):
                return None
        else:  # another frame type, a table we do not read past, a stand-alone marker
            return None
    return None


def _tables_fit(data: bytes, start: int, end: int) -> bool:
    """Quantization tables that exactly fill their segment (Pillow refuses a short one)."""
    while start < end:
        size = 1 + 64 * (1 if data[start] >> 4 == 0 else 2)
        start += size
    return start == end


def _app_is_plain(marker: int, segment: bytes) -> bool:
    """A segment Pillow reads nothing from, or only fields it holds; no EXIF, MPO or Photoshop block (Pillow
    parses those further, and a malformed one can make it refuse the file)."""
    if marker == _APP0 and segment.startswith(b"JFIF"):
        return len(segment) >= 12
    if marker == _APP14 and segment.startswith(b"Adobe"):
        return len(segment) >= 12 and segment[11] != 0  # transform 0: RGB stored as is, not YCbCr
    if marker == _APP2 and segment.startswith(b"ICC_PROFILE\0"):
        return len(segment) >= 14  # Pillow reads the fragment count at byte 13
    return not (
        (marker == _APP1 and segment.startswith(b"Exif\0\0"))
        or (marker == _APP2 and segment.startswith(b"MPF\0"))
        or (marker == _APP13 and segment.startswith(b"Photoshop 3.0\0"))
    )


@dataclass(frozen=True)
class JpegScans:
    """The scans of a JPEG as its bytes show them, counted up to a limit (an upper bound, see `jpeg_scans`)."""

    scans: int
    scan_components: int  # the components of every scan, summed: what libjpeg walks the frame for
    complete: bool  # False: counting stopped at the limit, the file holds more


def jpeg_scans(data: bytes, limit: int) -> JpegScans:
    """The start-of-scan markers from the first one on, counted until more than `limit` are seen.

    In entropy-coded data 0xFF is always followed by 0x00 or a marker, so every scan's marker is found; a table or
    comment segment between scans that happens to hold the two bytes FF DA counts once more, which errs on the
    safe side. Counting starts at the first scan so that an EXIF thumbnail (a JPEG inside APP1) is not counted; a
    header that cannot be walked is counted from its first byte. Runs in C but for one step per scan: a file of
    nothing but scan markers is read up to the limit only.
    """
    scans = components = 0
    for found in _SOS_MARKER.finditer(data, _first_scan(data)):
        if scans == limit:
            return JpegScans(scans + 1, components + _MAX_SCAN_COMPONENTS, complete=False)
        at = found.start()
        scans += 1
        declared = data[at + 4] if at + 4 < len(data) else 1
        components += min(max(declared, 1), _MAX_SCAN_COMPONENTS)
    return JpegScans(scans, components, complete=True)


def _first_scan(data: bytes) -> int:
    """Where the first scan's marker is, by walking the segments before it; 0 when they cannot be walked (or are
    too many to walk in Python: counting from the start then costs a few extra scans at most)."""
    end = len(data)
    pos = 2
    for _ in range(_MAX_HEADER_SEGMENTS):
        if pos + 4 > end:
            break
        if data[pos] != 0xFF:
            return 0
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _SOS:
            return pos
        if marker in _STAND_ALONE:
            pos += 2
            continue
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return 0


# -- what Pillow's header parser would go through, bounded (the outside attack of 4 Dec) ------------------------------
# Pillow's JPEG plugin reads the bytes before the first scan one `read(1)` at a time wherever they are not a
# segment: fill bytes (0xFF runs, legal before any marker), junk between segments, escaped FF 00 pairs, and every
# marker is one more trip through its Python loop (a COM segment one more tuple in a list). 9 MB of fill bytes cost
# ~3 s of Python holding the GIL; 2.2M empty COM markers as much. `header_problem` walks the same bytes the way
# Pillow does, but steps over each run of fill or junk with one compiled search (C), so the walk costs one Python
# step per segment or run and stops at the limits below.
MAX_FILLER_BYTES = 16_384  # fill, junk and escaped bytes before the first scan: encoders write none or a few
MAX_SEGMENTS_BEFORE_SCAN = 1024  # markers before the first scan: cameras write ~10-30 (ICC and MPF chunks included)
_FILL_RUN = re.compile(b"\xff+")
_JUNK_RUN = re.compile(b"[^\xff]*")
# Markers Pillow reads a length (and that many bytes) after; the others it takes alone (RSTn, SOI, EOI, JPG, JPGn).
_WITH_LENGTH = frozenset(set(range(0xC0, 0xC8)) | set(range(0xC9, 0xD0)) | set(range(0xDA, 0xF0)) | {0xFE})
_WITHOUT_LENGTH = frozenset(set(range(0xD0, 0xDA)) | {0xC8} | set(range(0xF0, 0xFE)))


@dataclass(frozen=True)
class HeaderWalk:
    """What the bytes before a JPEG's first scan hold, as Pillow's parser would walk them (up to the limits)."""

    segments: int  # markers, with or without a length
    filler_bytes: int  # fill bytes (0xFF runs), junk between segments and escaped FF 00 pairs
    ended: str  # "scan" (first scan reached), "end" (bytes ran out), "invalid" (Pillow refuses it), "limit"


def walk_header(data: bytes, max_segments: int = MAX_SEGMENTS_BEFORE_SCAN,
                max_filler: int = MAX_FILLER_BYTES) -> HeaderWalk:
    """Pillow's `JpegImageFile._open` loop over `data` (a JPEG: FF D8 FF ...), each run of fill or junk in one step.

    Stops with `ended="limit"` as soon as more than `max_segments` markers or `max_filler` filler bytes are seen,
    so its own cost is bounded by the limits whatever the file holds.
    """
    end = len(data)
    pos = 3  # Pillow reads three bytes (FF D8 FF) and goes on from the last FF
    pending_ff = True
    segments = filler = 0
    while segments <= max_segments and filler <= max_filler:
        if not pending_ff:  # junk: Pillow reads on byte by byte until an FF
            run = _JUNK_RUN.match(data, pos, min(end, pos + max_filler + 1))  # no further than the limit
            assert run is not None  # `[^\xff]*` always matches
            filler += run.end() - pos + 1  # the junk byte already read, and the run after it
            pos, pending_ff = run.end() + 1, True
            if pos > end:
                return HeaderWalk(segments, filler, "end")
            continue
        if pos >= end:
            return HeaderWalk(segments, filler, "end")
        marker = data[pos]
        if marker == 0xFF:  # fill bytes: FF FF is "padded marker", Pillow keeps the second FF and reads on
            run = _FILL_RUN.match(data, pos, min(end, pos + max_filler + 1))
            assert run is not None
            filler += run.end() - pos
            pos = run.end()
            continue
        pos += 1
        if marker == 0x00:  # FF 00: "escaped" data, skipped; the next byte starts over
            filler += 2
            if pos >= end:
                return HeaderWalk(segments, filler, "end")
            pending_ff = data[pos] == 0xFF
            pos += 1
            continue
        segments += 1
        if marker in _WITH_LENGTH:
            if pos + 2 > end:
                return HeaderWalk(segments, filler, "end")
            if marker == 0xDA:
                return HeaderWalk(segments, filler, "scan")
            length = (data[pos] << 8) | data[pos + 1]
            pos += 2 + max(0, length - 2)
            if pos > end:
                return HeaderWalk(segments, filler, "end")  # Pillow: truncated file read
        elif marker not in _WITHOUT_LENGTH:
            return HeaderWalk(segments, filler, "invalid")  # "no marker found": Pillow refuses the file at once
        if pos >= end:
            return HeaderWalk(segments, filler, "end")
        pending_ff = data[pos] == 0xFF
        pos += 1
    return HeaderWalk(segments, filler, "limit")


def header_problem(data: bytes, max_segments: int = MAX_SEGMENTS_BEFORE_SCAN,
                   max_filler: int = MAX_FILLER_BYTES) -> str | None:
    """Why a JPEG's header is refused before Pillow reads it (None: it is not abnormal)."""
    walk = walk_header(data, max_segments, max_filler)
    if walk.filler_bytes > max_filler:
        return (f"image: a JPEG with more than {max_filler} fill or junk bytes before its first scan is refused "
                "(decoders read them one at a time)")
    if walk.segments > max_segments:
        return (f"image: a JPEG with more than {max_segments} markers before its first scan is refused "
                "(encoders write a few dozen)")
    return None
