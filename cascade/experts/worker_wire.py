"""What the miner and an expert's worker process say to each other over their socket pair.

Frames are a 4-byte big-endian length and a pickle (protocol 5). Both ends are this package, started
by the miner itself: nothing from the network is ever unpickled here (the miner decodes a request's
base64 and checks its header before any of it reaches a worker, and sends only bytes, sizes and arrays).

Messages, miner -> worker: ("init", spec), ("batch", batch id, items).
Worker -> miner: ("ready", facts), ("failed", reason), ("result", batch id, answers, seconds) where each
answer is a float or ("decode_error", message) and seconds is the batch's time in the worker (unpacking, decoding
and the model), and ("error", batch id, kind, message) for a failed batch.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

from cascade.config import DecodeConfig
from cascade.decode import DecodeError, DeviceJpeg

_HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 1 << 31  # a batch of the largest JPEGs fits; a longer length prefix is a broken stream


def frame(message: Any) -> bytes:
    return b"".join(frame_parts(message))


def frame_parts(message: Any) -> tuple[bytes, bytes]:
    """The length prefix and the pickle, apart (a batch's megabytes are sent without joining them into a copy)."""
    body = pickle.dumps(message, protocol=5)
    return _HEADER.pack(len(body)), body


class FrameReader:
    """Bytes in as they arrive, whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Any]:
        self._buffer += data
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length >= MAX_FRAME_BYTES:
                raise ValueError(f"worker stream broken: a frame of {length} bytes")
            end = _HEADER.size + length
            if len(self._buffer) < end:
                return
            body = bytes(self._buffer[_HEADER.size:end])
            del self._buffer[:end]
            yield pickle.loads(body)


def pack_item(image: np.ndarray | DeviceJpeg) -> tuple[Any, ...]:
    """One batch item as plain data: a JPEG's bytes and checked header, or a host array."""
    if isinstance(image, DeviceJpeg):
        return ("jpeg", image.data, image.size, image.orientation, image.min_side)
    return ("array", np.ascontiguousarray(image))


def unpack_item(item: tuple[Any, ...], limits: DecodeConfig) -> np.ndarray | DeviceJpeg:
    if item[0] == "jpeg":
        _, data, size, orientation, min_side = item
        return DeviceJpeg(data, tuple(size), orientation, limits, min_side)
    return item[1]  # type: ignore[no-any-return]


def pack_answer(value: float | DecodeError) -> float | tuple[str, str]:
    return ("decode_error", str(value)) if isinstance(value, DecodeError) else float(value)


def unpack_answer(value: float | tuple[str, str]) -> float | DecodeError:
    return DecodeError(value[1]) if isinstance(value, tuple) else value
