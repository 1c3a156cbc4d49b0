"""A decode worker process (`python -m cascade.decode_worker NICE LIMITS_JSON`): costly images, one at a time.

The miner sends an image's bytes and gets its pixels back, or the DecodeError's message; it kills this process at
the request's deadline and starts another (cascade/decode_pool.py). It imports the decoder and nothing else: no
model library, so nothing here installs, downloads or patches Pillow's opener.

Wire (stdin -> stdout, little-endian): request `<IH` (bytes, min_side or 0) then the bytes; answer `<BIIIIBI`
(0 pixels / 1 refused, height, width, original width, original height, downscaled, length) then the HxWx3 uint8
pixels or the message in UTF-8. One byte "R" on start says the worker is ready.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from typing import IO

REQUEST = struct.Struct("<IH")
ANSWER = struct.Struct("<BIIIIBI")
READY = b"R"
PIXELS, REFUSED = 0, 1


def read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    """`size` bytes, or None at the end of the stream (the other side has gone)."""
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve(requests: IO[bytes], answers: IO[bytes], limits_json: str) -> None:
    from cascade.config import DecodeConfig
    from cascade.decode import DecodeError, decode_image

    # pm2 stop and Ctrl-C send SIGINT to the whole process group: the miner drains and ends this worker itself, so
    # the worker ignores it (it printed a KeyboardInterrupt traceback into the operator's log on every stop).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limits = DecodeConfig.model_validate_json(limits_json)
    answers.write(READY)
    answers.flush()
    while (head := read_exactly(requests, REQUEST.size)) is not None:
        size, min_side = REQUEST.unpack(head)
        data = read_exactly(requests, size)
        if data is None:
            return
        try:
            decoded = decode_image(data, limits, min_side or None)
        except DecodeError as exc:
            message = str(exc).encode()
            answers.write(ANSWER.pack(REFUSED, 0, 0, 0, 0, 0, len(message)) + message)
        else:
            image = decoded.image
            height, width = image.shape[:2]
            answers.write(ANSWER.pack(PIXELS, height, width, *decoded.original_size, decoded.downscaled,
                                      image.nbytes))
            answers.write(image.data.cast("B"))
        answers.flush()


def main() -> None:
    nice, limits_json = int(sys.argv[1]), sys.argv[2]
    if nice:
        os.nice(nice)  # the request path's threads and loops keep the CPU first
    # The answers go to a descriptor of their own; whatever a library prints lands on stderr, not in the wire.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, answers, limits_json)


if __name__ == "__main__":
    main()
