"""Hostile and unusual images sent the way validators send them (a real bittensor dendrite), and image bombs.

Defects 3, 4 and 7 of the first red-team pass (docs/security.md): ultralytics' patched `PIL.Image.open` tried to install
a HEIF plugin during a request and named the missing module in the answer; large PNGs were decoded in full and the
memory kept; EXIF orientation was ignored and the answer carried the image back.
"""

from __future__ import annotations

import math
import re

import pytest

from sn72_lab.hostile import payloads
from sn72_lab.hostile.catalogue import LEAKY

pytestmark = [pytest.mark.security, pytest.mark.slow]  # every test here attacks the miner subprocess

INSTALL_OR_NETWORK = re.compile(r"requirement|autoupdate|pip install|-m pip|pi[-_]heif|SN72-NETWORK-PROBE", re.I)

IMAGES = {
    "bad-base64": (lambda: "%%% not base64 %%%", 400, "invalid base64"),
    "not-an-image": (lambda: payloads.b64(b"just some text, no pixels"), 400, "not a readable image"),
    "truncated-jpeg": (lambda: payloads.b64(payloads.truncated_jpeg()), 400, ""),
    "gif": (lambda: payloads.b64(payloads.gif()), 400, ""),
    "animated-png": (lambda: payloads.b64(payloads.animated_png()), 200, ""),
    "animated-webp": (lambda: payloads.b64(payloads.animated_webp()), 200, ""),
    "cmyk-jpeg": (lambda: payloads.b64(payloads.cmyk_jpeg()), 200, ""),
    "grey16-png": (lambda: payloads.b64(payloads.grey16_png()), 200, ""),
    "rgb48-png": (lambda: payloads.b64(payloads.rgb48_png()), 200, ""),
    "palette-png": (lambda: payloads.b64(payloads.palette_png()), 200, ""),
    "rgba-png": (lambda: payloads.b64(payloads.rgba_png()), 200, ""),
    "la-png": (lambda: payloads.b64(payloads.la_png()), 200, ""),
    "exif-rotated-jpeg": (lambda: payloads.b64(payloads.exif_rotated_jpeg()), 200, ""),
    "downscaled-png": (lambda: payloads.b64(payloads.solid_png(2000, 1000)), 200, ""),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_images_through_a_real_dendrite(hostile, name):
    make, status, text = IMAGES[name]
    with hostile.survives():
        [outcome] = hostile.ask(hostile.prober(), [make()])
    assert outcome.status_code == status, (outcome.status_code, outcome.message)
    assert text in outcome.message.lower()
    if status == 200:
        assert not math.isnan(outcome.prediction) and 0.0 <= outcome.prediction <= 1.0
    else:
        assert outcome.prediction == -1.0  # a refusal carries no answer
        assert not LEAKY.search(outcome.message), outcome.message


def test_a_heic_payload_is_refused_without_installing_or_reaching_the_network(hostile):
    since = len(hostile.log())
    with hostile.survives():
        [outcome] = hostile.ask(hostile.prober(), [payloads.b64(payloads.heic_like())])
        [text] = hostile.ask(hostile.prober(), [payloads.b64(b"plain text, not an image")])
    assert outcome.status_code == 400 and text.status_code == 400, (outcome.message, text.message)
    for message in (outcome.message, text.message):
        assert not LEAKY.search(message), message
    attempts = [line for line in hostile.settled_log(since) if INSTALL_OR_NETWORK.search(line)]
    assert not attempts, attempts
    # Not at start-up either (ultralytics resolves public names on import unless told it is offline).
    assert not [line for line in hostile.log() if "SN72-NETWORK-PROBE" in line]


def test_png_bombs_are_refused_from_the_header_while_the_validator_is_answered(hostile):
    hostile.reset_peak()
    before_mb = hostile.rss_mb()
    observation, stats = hostile.attack_beside_validator("png-bombs-parallel")
    assert not observation.problems, (observation.problems, [r.message for r in observation.replies])
    assert hostile.peak_mb() - before_mb < 100, "a 20000x20000 header was decoded, not refused"
    assert stats.sent >= 2 and stats.answered == stats.sent, stats.summary()


def test_large_pngs_are_downscaled_with_bounded_memory(hostile):
    """Three 6000x6000 PNGs at once (36 MP each, above max_pixels 1 MP, under max_decode_pixels 40 MP)."""
    hostile.reset_peak()
    before_mb = hostile.rss_mb()
    for _ in range(2):  # the memory of the first round must be given back, not kept for the second
        observation, stats = hostile.attack_beside_validator("large-pngs-parallel", minimum_window_s=2.0)
        assert not observation.problems, observation.problems
        assert stats.answered == stats.sent, stats.summary()
    peak_growth_mb = hostile.peak_mb() - before_mb
    kept_mb = hostile.rss_mb() - before_mb
    assert peak_growth_mb < 500, f"peak resident memory grew {peak_growth_mb:.0f} MB"
    assert kept_mb < 200, f"{kept_mb:.0f} MB kept after the large decodes"
