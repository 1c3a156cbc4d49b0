"""From fuzz bytes to one HTTP request: every byte is a choice, so a mutated input is a mutated request.

The same bytes always give the same request (nonces and uuids aside, which are fresh per send so the nonce rule
judges the request, not a replay), and hypothesis can shrink a failure to the fewest odd parts.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sn72_lab.hostile import payloads
from sn72_lab.hostile.wire import HostileRequest

T = TypeVar("T")

_ROUTES = ["ImageSynapse", "ImageSynapse", "ImageSynapse", "ExtendedImageSynapse", "Synapse", "NotASynapse",
           "%ff", "ImageSynapse%00", "Image%C0%AFSynapse", "%F0%9F%92%A9", "ImageSynapse/extra", "..%2f"]
_METHODS = ["POST"] * 8 + ["GET", "HEAD", "PUT", "OPTIONS", "DELETE", "PATCH"]
_BT_HEADERS = ["bt_header_dendrite_nonce", "bt_header_dendrite_hotkey", "bt_header_dendrite_uuid",
               "bt_header_dendrite_signature", "bt_header_dendrite_version", "bt_header_dendrite_ip",
               "bt_header_axon_hotkey", "computed_body_hash", "timeout", "name", "header_size", "total_size",
               "bt_header_input_obj_image", "content-type", "connection", "transfer-encoding", "upgrade", "expect"]
_ODD_VALUES = ["", " ", "0", "-1", "1e308", "nan", "inf", "-inf", "None", "null", "true", "[]", "{}", "9" * 400,
               "\u00ff\u00fe", "close", "upgrade", "websocket", "chunked", "100-continue", "a" * 5000]
_PREDICTIONS: list[Any] = [-1.0, 0.0, 0.5, 1.0, math.nan, math.inf, -math.inf, 1e308, "0.5", None, [], {}, True]
_LABELS: list[Any] = [-1, 0, 1, 2, 10**30, "1", None, 0.5, []]


def _seeds() -> list[bytes]:
    """Valid images of the kinds validators send and a few they do not: mutations start from these."""
    return [payloads.jpeg(1, (48, 32)), payloads.jpeg(2, (16, 64)), payloads.encode(payloads.photo(3, (40, 30)), "PNG"),
            payloads.grey16_png(), payloads.palette_png(), payloads.rgba_png(), payloads.cmyk_jpeg(),
            payloads.exif_rotated_jpeg(6), payloads.encode(payloads.photo(4, (40, 30)), "WEBP"), payloads.gif(),
            payloads.solid_png(300, 200)]


_SEEDS: list[bytes] = []


def seeds() -> list[bytes]:
    if not _SEEDS:
        _SEEDS.extend(_seeds())
    return _SEEDS


class Chooser:
    """Reads choices from bytes; past the end every choice is the first option (so short inputs stay valid)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def byte(self) -> int:
        if self._at >= len(self._data):
            return 0
        value = self._data[self._at]
        self._at += 1
        return value

    def below(self, n: int) -> int:
        """An integer in [0, n) (two bytes of choice: enough for every list and length here)."""
        if n <= 1:
            return 0
        return ((self.byte() << 8) | self.byte()) % n if n > 256 else self.byte() % n

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def chance(self, one_in: int) -> bool:
        return self.below(one_in) == 1 % one_in

    def blob(self, max_len: int) -> bytes:
        length = self.below(max_len + 1)
        return bytes(self.byte() for _ in range(length))


@dataclass
class Case:
    request: HostileRequest
    checks_prediction: bool  # a 200 on this route must carry a prediction in [0, 1]


def mutate(data: bytes, choose: Chooser) -> bytes:
    """A few byte-level edits: flips, truncation, insertion, deletion, a dimension field overwritten."""
    out = bytearray(data)
    for _ in range(choose.below(6)):
        kind = choose.below(5)
        at = choose.below(max(1, len(out)))
        if kind == 0 and out:
            out[at] ^= choose.byte() or 1
        elif kind == 1:
            del out[at:]
        elif kind == 2:
            out[at:at] = choose.blob(16)
        elif kind == 3:
            del out[at:at + 1 + choose.below(64)]
        elif kind == 4 and len(out) > at + 4:
            out[at:at + 4] = bytes([0xFF, 0xFF, choose.byte(), choose.byte()])
    return bytes(out)


def image_field(choose: Chooser) -> str:
    """The `image` field: a seed image (often mutated) in base64, or base64 made odd, or raw text."""
    kind = choose.below(10)
    if kind == 9:
        return choose.blob(64).decode("latin-1")  # not base64 at all
    raw = choose.pick(seeds()) if kind < 8 else choose.blob(512)
    if choose.chance(2):
        raw = mutate(raw, choose)
    text = base64.b64encode(raw).decode()
    odd = choose.below(8)
    if odd == 1:
        text = text.rstrip("=")
    elif odd == 2:
        text = "data:image/jpeg;base64," + text
    elif odd == 3 and text:
        at = choose.below(len(text))
        text = text[:at] + choose.pick(["\n", " ", "*", "-", "_", "==", "\u00e9"]) + text[at:]
    elif odd == 4:
        text = base64.urlsafe_b64encode(raw).decode()
    return text


def headers(choose: Chooser) -> dict[str, str | None]:
    """Up to three headers replaced by an odd value or removed (None)."""
    chosen: dict[str, str | None] = {}
    for _ in range(choose.below(4) if choose.chance(3) else 0):
        name = choose.pick(_BT_HEADERS)
        chosen[name] = None if choose.chance(4) else choose.pick(_ODD_VALUES)
    return chosen


def case_from_bytes(data: bytes, signers: Sequence[Any], stranger: Any, miner_hotkey: str) -> Case:
    """The request these bytes choose. `signers`: registered validators' keypairs; `stranger`: an unregistered one."""
    choose = Chooser(data)
    signed = not choose.chance(6)
    signer = choose.pick(signers) if not choose.chance(8) else stranger
    route = choose.pick(_ROUTES)
    fields: dict[str, Any] = {}
    if choose.chance(3):
        fields["prediction"] = choose.pick(_PREDICTIONS)
    if choose.chance(4):
        fields["testnet_label"] = choose.pick(_LABELS)
    if choose.chance(8):
        fields[choose.pick(["model_url", "explanation", "image", "dendrite", "axon", "name", "timeout"])] = \
            choose.pick(_PREDICTIONS + _ODD_VALUES)
    body: bytes | None = None
    body_kind = choose.below(12)
    if body_kind == 0:
        body = choose.blob(256)
    elif body_kind == 1:
        body = json.dumps(choose.pick([[], "x", 1, None, {"image": 5}])).encode()
    nonce_kind = choose.below(10)
    nonce_offset_ns = {1: -30 * 10**9, 2: 30 * 10**9, 3: -10**18, 4: 10**40}.get(nonce_kind)
    request = HostileRequest(
        signer=signer if signed else None,
        claim_hotkey=None if signed and not choose.chance(10) else choose.pick(
            [signers[0].ss58_address, stranger.ss58_address, "", "5" * 48, choose.blob(48).decode("latin-1")]),
        route=route, method=choose.pick(_METHODS), image=image_field(choose), fields=fields, body=body,
        timeout_header=choose.pick([None, None, None, "9", "nan", "inf", "-5", "1e9", "0", "abc"]),
        headers=headers(choose),
        axon_hotkey=None if not choose.chance(12) else stranger.ss58_address,
        chunked=None if not choose.chance(10) else 1 + choose.below(4096),
        content_length=None if not choose.chance(16) else choose.below(64),
    )
    if nonce_offset_ns is not None:
        request.nonce_ns = nonce_offset_ns  # relative: the sender adds the time of sending
    return Case(request, checks_prediction=route in ("ImageSynapse", "ExtendedImageSynapse"))
