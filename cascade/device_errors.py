"""What a device error means for the process: an out-of-memory a smaller batch may survive, or a lost CUDA context.

Read by the scheduler (which retries or retires a replica) and by the experts and the GPU worker process, which sit
below it and must not import it.
"""

from __future__ import annotations

# Messages of errors after which the device's context is unusable: every later batch would fail too.
_FATAL_DEVICE_ERRORS = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "cuda driver",
    "context is destroyed",
    "an illegal instruction",
    "uncorrectable ecc",
)


def is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def is_fatal_device_error(exc: BaseException) -> bool:
    """A lost CUDA context (not an out-of-memory, which a smaller batch may survive)."""
    text = str(exc).lower()
    return not is_out_of_memory(exc) and any(marker in text for marker in _FATAL_DEVICE_ERRORS)
