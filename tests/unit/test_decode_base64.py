"""decode_payload's base64 (pybase64) against the standard library's strict decoder: every canonical encoding is
decoded to the same bytes, nothing the standard library refuses is accepted, and what only pybase64 refuses is
surplus padding after a complete group ("AAAA=") that no encoder writes."""

from __future__ import annotations

import base64
import binascii

from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.config import DecodeConfig
from cascade.decode import DecodeError, decode_payload

LIMITS = DecodeConfig()
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def stdlib(payload: str) -> bytes | None:
    """What `base64.b64decode(validate=True)` makes of it; None where it refuses."""
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def ours(payload: str) -> bytes | None:
    try:
        return decode_payload(payload, LIMITS)
    except DecodeError:
        return None


@given(st.binary(min_size=1, max_size=600))
def test_any_bytes_round_trip(data: bytes) -> None:
    assert decode_payload(base64.b64encode(data).decode(), LIMITS) == data


def agrees(payload: str) -> None:
    mine, theirs = ours(payload), stdlib(payload)
    if mine is not None:
        assert mine == theirs  # accepted: the same bytes, and never something the standard library refuses
    elif theirs is not None:  # refused by us only: surplus padding after a complete 4-character group
        core = payload.rstrip("=")
        assert len(core) % 4 == 0 and base64.b64decode(core, validate=True) == theirs, payload


@settings(max_examples=400)
@given(st.text(alphabet=ALPHABET + " \n\t-_.é\x00", min_size=1, max_size=64))
def test_near_base64_text_is_judged_as_the_standard_library_judges_it(payload: str) -> None:
    agrees(payload)


@given(st.binary(min_size=1, max_size=300), st.sampled_from(["\n", " ", "=", "==", "A", "!", "é"]),
       st.integers(min_value=0, max_value=400))
def test_one_stray_character_anywhere(data: bytes, stray: str, at: int) -> None:
    text = base64.b64encode(data).decode()
    at = min(at, len(text))
    agrees(text[:at] + stray + text[at:])


def test_empty_and_oversize_payloads_are_refused_before_decoding() -> None:
    for payload, reason in (("", "empty payload"), ("A" * (LIMITS.max_payload_bytes + 4), "exceeds the limit")):
        try:
            decode_payload(payload, LIMITS)
        except DecodeError as exc:
            assert reason in str(exc)
        else:
            raise AssertionError(f"{payload[:8]!r}... was accepted")
