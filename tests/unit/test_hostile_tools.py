"""The red-team tools themselves: forged requests are signed exactly as bittensor signs, payloads are real files."""

from __future__ import annotations

import io
import json
import struct
import time

import numpy as np
import pytest
from bittensor_wallet import Keypair
from PIL import Image

from sn72_lab.hostile import payloads
from sn72_lab.hostile.catalogue import catalogue
from sn72_lab.hostile.target import keypair
from sn72_lab.hostile.wire import HostileRequest, Target, build, build_synapse, dendrite_for, signing_message

MINER = keypair("unit-miner")
TARGET = Target("127.0.0.1", 8091, MINER.ss58_address)


def headers_of(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def verifies(headers: dict[str, str], hotkey: str | None = None) -> bool:
    """What bittensor's `Axon.default_verify` checks, from the headers alone."""
    message = (f"{headers['bt_header_dendrite_nonce']}.{headers['bt_header_dendrite_hotkey']}.{MINER.ss58_address}."
               f"{headers['bt_header_dendrite_uuid']}.{headers['computed_body_hash']}")
    signer = Keypair(ss58_address=hotkey or headers["bt_header_dendrite_hotkey"])
    return bool(signer.verify(message, headers["bt_header_dendrite_signature"]))


def test_the_signed_string_is_the_one_bittensors_dendrite_signs():
    signer = keypair("unit-validator")
    synapse = build_synapse(HostileRequest(signer=signer, image="AAAA"), TARGET)
    assert signer.verify(signing_message(synapse), synapse.dendrite.signature)
    assert dendrite_for(signer).keypair.ss58_address == signer.ss58_address


def test_a_signed_request_verifies_and_its_body_is_the_synapse():
    head, body = build(HostileRequest(signer=keypair("unit-validator"), image="AAAA"), TARGET)
    headers = headers_of(head)
    assert head.startswith(b"POST /ImageSynapse HTTP/1.1\r\n") and head.endswith(b"\r\n\r\n")
    assert verifies(headers) and int(headers["Content-Length"]) == len(body)
    assert json.loads(body)["image"] == "AAAA" and headers["timeout"] == "9.0"


def test_tampers_that_keep_a_valid_signature_are_re_signed():
    old_ns = time.time_ns() - 3600 * 10**9
    head, _ = build(HostileRequest(signer=keypair("unit-validator"), nonce_ns=old_ns, uuid="u-1",
                                   timeout_header="nan"), TARGET)
    headers = headers_of(head)
    assert headers["bt_header_dendrite_nonce"] == str(old_ns) and headers["timeout"] == "nan" and verifies(headers)


def test_tampers_that_break_the_signature_do():
    stranger, validator = keypair("unit-stranger"), keypair("unit-validator")
    spoofed = headers_of(build(HostileRequest(signer=stranger, claim_hotkey=validator.ss58_address), TARGET)[0])
    assert spoofed["bt_header_dendrite_hotkey"] == validator.ss58_address and not verifies(spoofed)
    unsigned = headers_of(build(HostileRequest(claim_hotkey=validator.ss58_address), TARGET)[0])
    assert "bt_header_dendrite_signature" not in unsigned and unsigned["bt_header_dendrite_hotkey"]


def test_raw_header_and_body_tampers_go_on_the_wire_as_given():
    request = HostileRequest(signer=keypair("unit-validator"), body=b"x" * 10, headers={"computed_body_hash": None},
                             raw_header_lines=[b"x-junk: 1"], chunked=4, fields={"prediction": float("nan")})
    head, body = build(request, TARGET)
    assert b"computed_body_hash" not in head and b"x-junk: 1\r\n" in head and b"Transfer-Encoding: chunked" in head
    assert body == b"4\r\nxxxx\r\n4\r\nxxxx\r\n2\r\nxx\r\n0\r\n\r\n"
    nan_body = build(HostileRequest(signer=keypair("unit-validator"), fields={"prediction": float("nan")}), TARGET)[1]
    assert b'"prediction": NaN' in nan_body


@pytest.mark.parametrize(("size", "colour", "depth"), [((7, 5), (90, 16, 128), 8), ((33, 70), (3,), 8),
                                                        ((10, 65), (40000, 1, 65535), 16), ((1, 1), (1, 2, 3), 8)])
def test_solid_png_is_a_valid_png_of_that_size_and_colour(size, colour, depth):
    image = Image.open(io.BytesIO(payloads.solid_png(*size, colour, bit_depth=depth)))
    image.load()  # the whole stream, adler32 trailer included
    assert image.size == size
    array = np.asarray(image)
    expected = np.asarray(colour) >> 8 if depth == 16 and len(colour) == 3 else np.asarray(colour)
    assert (array.reshape(-1, len(colour)) == expected).all()


def test_the_bomb_is_cheap():
    started_s = time.monotonic()
    data = payloads.solid_png(20000, 20000)
    assert len(data) < 2_000_000 and time.monotonic() - started_s < 5.0
    assert struct.unpack(">II", data[16:24]) == (20000, 20000)  # what the IHDR claims: 1.2 GB of RGB


def test_payloads_are_what_they_say():
    assert Image.open(io.BytesIO(payloads.cmyk_jpeg())).mode == "CMYK"
    assert Image.open(io.BytesIO(payloads.grey16_png())).mode.startswith("I;16")
    assert getattr(Image.open(io.BytesIO(payloads.animated_png())), "n_frames", 1) == 3
    assert getattr(Image.open(io.BytesIO(payloads.animated_webp())), "n_frames", 1) == 3
    assert Image.open(io.BytesIO(payloads.exif_rotated_jpeg(6))).getexif()[payloads.ORIENTATION_TAG] == 6
    assert payloads.heic_like()[4:12] == b"ftypheic"


def test_the_catalogue_names_are_unique_and_expectations_are_never_500():
    attacks = catalogue()
    assert len({a.name for a in attacks}) == len(attacks) >= 40
    assert all(500 not in a.expected for a in attacks)
