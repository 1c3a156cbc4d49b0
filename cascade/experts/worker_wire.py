"""What the miner and an expert's worker process say to each other over their socket pair.

A frame is a header (the pickle's length and the number of out-of-band buffers, then each buffer's length, 4-byte
big-endian numbers), the pickle (protocol 5), then the buffers. The JPEGs' bytes and host arrays of a batch travel
out of band: pickling does not copy them in the miner (the sending thread hands them to the kernel as they are,
without the interpreter lock); the worker receives them into buffers of its own. Both ends are this package, started
by the miner itself: nothing from the network is ever unpickled here (the miner decodes a request's
base64 and checks its header before any of it reaches a worker, and sends only bytes, sizes and arrays).

Messages, miner -> worker: ("init", spec), ("batch", batch id, items).
Worker -> miner: ("ready", facts), ("failed", reason), ("result", batch id, answers, seconds, stages) where each
answer is a float or ("decode_error", message), seconds is the batch's time in the worker (unpacking, decoding and
the model) and stages that time by stage (a dict, experts/base.py WORKER_STAGES: "unpack" always, the others where
the expert times them), and ("error", batch id, kind, message) for a failed batch.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

from cascade.config import DecodeConfig
from cascade.decode import DecodeError, DeviceJpeg

_HEADER = struct.Struct(">II")  # the pickle's bytes, the out-of-band buffers' count
_LENGTH = struct.Struct(">I")
MAX_FRAME_BYTES = 1 << 31  # a batch of the largest JPEGs fits; a longer frame is a broken stream
MAX_BUFFERS = 1 << 16  # out-of-band buffers in one frame (a batch's items: max_batch is at most 1,024)


def frame(message: Any) -> bytes:
    return b"".join(frame_parts(message))


def frame_parts(message: Any) -> list[bytes | memoryview]:
    """The frame in pieces to send one after the other: the header, the pickle, and each out-of-band buffer as it
    is (a JPEG's bytes, an array's memory: not copied here)."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    header = _HEADER.pack(len(body), len(views)) + b"".join(_LENGTH.pack(view.nbytes) for view in views)
    return [header, body, *views]


class FrameReader:
    """Bytes in as they arrive, whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Any]:
        self._buffer += data
        while len(self._buffer) >= _HEADER.size:
            body_bytes, count = _HEADER.unpack_from(self._buffer)
            if count > MAX_BUFFERS:
                raise ValueError(f"worker stream broken: a frame of {count} buffers")
            lengths_end = _HEADER.size + _LENGTH.size * count
            if len(self._buffer) < lengths_end:
                return
            lengths = struct.unpack_from(f">{count}I", self._buffer, _HEADER.size)
            total = body_bytes + sum(lengths)
            if total >= MAX_FRAME_BYTES:
                raise ValueError(f"worker stream broken: a frame of {total} bytes")
            if len(self._buffer) < lengths_end + total:
                return
            body = bytes(self._buffer[lengths_end:lengths_end + body_bytes])
            at = lengths_end + body_bytes
            buffers = []
            for length in lengths:  # bytearrays: an array unpickled over one is writable, as in the miner
                buffers.append(self._buffer[at:at + length])
                at += length
            del self._buffer[:at]
            yield pickle.loads(body, buffers=buffers)


def pack_item(image: np.ndarray | DeviceJpeg) -> tuple[Any, ...]:
    """One batch item as plain data: a JPEG's bytes and checked header, or a host array."""
    if isinstance(image, DeviceJpeg):  # the bytes out of band (numpy sends an array's memory so by itself)
        return ("jpeg", pickle.PickleBuffer(image.data), image.size, image.orientation, image.min_side)
    return ("array", np.ascontiguousarray(image))


def unpack_item(item: tuple[Any, ...], limits: DecodeConfig) -> np.ndarray | DeviceJpeg:
    if item[0] == "jpeg":
        _, data, size, orientation, min_side = item
        return DeviceJpeg(bytes(data), tuple(size), orientation, limits, min_side)  # out of band: a buffer
    return item[1]  # type: ignore[no-any-return]


def pack_answer(value: float | DecodeError) -> float | tuple[str, str]:
    return ("decode_error", str(value)) if isinstance(value, DecodeError) else float(value)


def unpack_answer(value: float | tuple[str, str]) -> float | DecodeError:
    return DecodeError(value[1]) if isinstance(value, tuple) else value
