"""The ways a decode ends without pixels; in a module of their own so that every decode module can raise them."""

from __future__ import annotations


class DecodeError(ValueError):
    """The payload is not an acceptable image; the message says why, for the caller."""


class DecodeRefused(DecodeError):
    """An acceptable image whose decoding would cost more than the limits allow, refused from its header.

    `reason` labels the refusal in `sn72_miner_decode_refused_total` (jpeg_scans, decode_work).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DecodeBusy(RuntimeError):
    """No decode capacity (memory budget or worker) came free before the request's deadline (not the caller's fault)."""
