"""The attacks the second red-team pass added to the catalogue: its eight defects (docs/security.md), and what
an attack from outside tried that held.

Most of them are judged by the line (sn72_lab/hostile/measure.py: the honest validator's model answers in time,
its p99, 500s, the miner's memory peak) more than by their own statuses, so most are `heavy`: the red team runs
them beside the honest validator, and the suite runs them in their small size (`Context.full` False).
"""

from __future__ import annotations

import math
from typing import Any

from sn72_lab.hostile import accounting, fairness, heavy, odd_requests, outside_attack, payloads, replays
from sn72_lab.hostile.model import Attack, Check
from sn72_lab.hostile.wire import CLOSED, HostileRequest

DAY_S = 86_400.0


def statuses(*values: int | str) -> frozenset[int | str]:
    return frozenset(values)


def second_pass_attacks(single: Any, image_attack: Any, answered: Check) -> list[Attack]:
    """`single`, `image_attack` and `answered` are the catalogue's own helpers (passed in: no import cycle)."""
    auth, odd = statuses(401), statuses(400, 404)
    bad_or_fine = statuses(200, 400)

    def unsigned(route: str = "ImageSynapse", **tampers: Any) -> Any:
        return single(lambda c: HostileRequest(claim_hotkey=c.validator_hotkey, route=route, image="AAAA", **tampers))

    def fresh(**tampers: Any) -> Any:
        return single(lambda c: HostileRequest(signer=c.attacker, image=payloads.b64(payloads.jpeg(15)), **tampers))

    def body_of(make: Any) -> Any:  # built when sent: the catalogue is listed often, these bodies are megabytes
        return single(lambda c: HostileRequest(signer=c.attacker, body=make()))

    return [
        # 1. decode cost: one permit holder under its rate limit
        Attack("progressive-jpeg-2000-scans", bad_or_fine,
               "6000x6000 progressive JPEGs of 2,000 empty scans (~90 KB), 1.5/s for 20 s by one validator",
               fairness.costly_jpeg_stream(6000, 6000, 2000, small=(3000, 3000, 600)), heavy=True),
        Attack("progressive-jpeg-99-scans", bad_or_fine,
               "5400x5400 progressive JPEGs of 99 scans (just under the default limits), 1.5/s for 20 s",
               fairness.costly_jpeg_stream(5400, 5400, 99, small=(3000, 3000, 99)), heavy=True),
        # 2. unsigned version header switching the age window off
        Attack("old-version-signed-30s-ago", auth, "signed 30 s ago, fresh uuid, version header 7.1.0",
               replays.signed_long_ago(30.0)),
        Attack("old-version-signed-1h-ago", auth, "signed 1 h ago, fresh uuid, version header 7.1.0",
               replays.signed_long_ago(3600.0)),
        Attack("old-version-signed-30d-ago", auth, "signed 30 days ago, fresh uuid, version header 7.1.0",
               replays.signed_long_ago(30 * DAY_S)),
        Attack("no-version-signed-1h-ago", auth, "signed 1 h ago, fresh uuid, no version header",
               replays.signed_long_ago(3600.0, version=None)),
        Attack("captured-request-replayed-old-version", auth,
               "a signed request answered, then its bytes sent 30 times more with the version header lowered",
               replays.captured_replays),
        # 3. a validator's own nonces out of order
        Attack("reordered-nonces-one-dendrite", statuses(200, 429),
               "8 requests of one dendrite uuid arriving in reverse nonce order, 30 ms apart",
               replays.reordered_nonces, check=replays.none_refused_as_old),
        # 4. upgrades
        Attack("websocket-upgrades-then-honest", statuses(200, 400, 403, 404, 426, CLOSED),
               "70-80 `Upgrade: websocket` requests from one address, then a signed request from it",
               fairness.upgrades_then_honest, heavy=True, check=fairness.honest_after_upgrades),
        # 5. slow bodies holding request slots
        # 429: past its signer's bucket a request is refused before its body is read (412b485)
        Attack("slow-bodies-holding-slots", statuses(408, 429, CLOSED, 503),
               "24-60 signed requests from one address trickling their bodies, reopened for 6-20 s",
               fairness.slow_bodies_holding_slots, heavy=True),
        # 6. odd request lines, unsigned
        Attack("nonce-400-digits", statuses(400, 401), "unsigned, bt_header_dendrite_nonce of 400 digits",
               unsigned(headers={"bt_header_dendrite_nonce": "9" * 400})),
        Attack("path-percent-ff", odd, "POST /%ff", unsigned("%ff")),
        Attack("path-overlong-utf8", odd, "POST /Image%C0%AFSynapse", unsigned("Image%C0%AFSynapse")),
        Attack("path-emoji", odd, "POST /%F0%9F%92%A9", unsigned("%F0%9F%92%A9")),
        Attack("path-nul", odd, "POST /ImageSynapse%00", unsigned("ImageSynapse%00")),
        Attack("head-method", statuses(400, 404, 405), "HEAD /ImageSynapse (answer read without a body)",
               odd_requests.head_only),
        # 7. 16-bit greyscale PNGs through the decode budget
        Attack("grey16-pngs-parallel", statuses(200), "3 16-bit greyscale PNGs at once, 5600x5600 (2000 small)",
               fairness.grey16_pngs, heavy=True, check=answered),
        # 8. accounting
        Attack("client-gone-accounting", statuses(200, "skipped"),
               "5 signed requests whose client hangs up at once (counted once each), 5 answered (no late counts)",
               accounting.reported_once, heavy=True),
        # what an attack from outside tried (it held; kept so that it keeps holding)
        Attack("smuggling-cl-and-te", statuses(200, 400, CLOSED),
               "Content-Length and chunked together, a request hidden after the chunked body (answered on its own)",
               odd_requests.raw(odd_requests.smuggled_cl_te)),
        Attack("smuggling-two-lengths", statuses(400, CLOSED), "two different Content-Length headers",
               odd_requests.raw(odd_requests.duplicate_lengths)),
        Attack("pipelined-requests", statuses(200, CLOSED), "two signed requests in one write on one connection",
               odd_requests.pipelined, check=odd_requests.first_answered),
        Attack("json-deep-nesting", statuses(400, 413), "image: 100,000 nested lists",
               body_of(odd_requests.deep_json)),
        Attack("json-200k-keys", statuses(400, 413), "a body object of 200,000 keys", body_of(odd_requests.many_keys)),
        Attack("label-4000-digits", bad_or_fine, "testnet_label an integer of 4,000 digits",
               fresh(fields={"testnet_label": int("9" * 4000)}), check=answered),
        Attack("base64-data-uri", bad_or_fine, "image 'data:image/jpeg;base64,...'",
               image_attack(odd_requests.data_uri()), check=answered),
        Attack("base64-wrapped-76", bad_or_fine, "image base64 wrapped at 76 columns",
               image_attack(odd_requests.wrapped_base64()), check=answered),
        Attack("base64-urlsafe-unpadded", bad_or_fine, "image in the URL-safe alphabet, no padding",
               image_attack(odd_requests.urlsafe_base64()), check=answered),
        Attack("timeout-zero", bad_or_fine, "fresh nonce, timeout header 0", fresh(timeout_header="0"), check=answered),
        Attack("timeout-1e400", bad_or_fine, "fresh nonce, timeout header 1e400", fresh(timeout_header="1e400"),
               check=answered),
        Attack("prediction-huge", bad_or_fine, "prediction -1e308", fresh(fields={"prediction": -1e308}),
               check=answered),
        Attack("prediction-null", bad_or_fine, "prediction null", fresh(fields={"prediction": None}), check=answered),
        Attack("prediction-nan-good-image", bad_or_fine, "prediction NaN, a good image",
               fresh(fields={"prediction": math.nan}), check=answered),
        Attack("jpeg-frame-bomb", statuses(400), "a tiny JPEG declaring 65000x65000",
               image_attack(odd_requests.jpeg_frame_bomb)),
        Attack("webp-canvas-bomb", statuses(400), "a VP8X WebP declaring a 16384x16384 canvas, no image",
               image_attack(odd_requests.webp_canvas_bomb)),
        Attack("animation-2000-frames", bad_or_fine, "an APNG of 2,000 frames of 16x16",
               image_attack(odd_requests.long_animation(2000)), check=answered),
        Attack("header-storm", statuses(400, 401, 403, 431), "200-400 requests of 200 header lines, 16 at a time",
               odd_requests.header_storm, heavy=True),
        Attack("non-permit-flood", statuses(403, "skipped"), "300-1000 signed by a registered key without a permit",
               odd_requests.non_permit_flood, heavy=True),
        Attack("random-hotkey-flood", statuses(403), "300-1000 signed by as many random keys",
               odd_requests.random_hotkey_flood, heavy=True),
        # what the outside attack of 2026-12-04 broke (fixed in 9426cce, 412b485): kept refused
        Attack("jpeg-fill-bytes", statuses(400), "a JPEG with 1 MB of 0xFF fill bytes before its first marker",
               image_attack(lambda: outside_attack.fill_byte_jpeg())),
        Attack("jpeg-empty-comment-markers", statuses(400), "a JPEG with 200,000 empty COM markers before its frame",
               image_attack(lambda: outside_attack.empty_comment_jpeg())),
        Attack("chunked-1-byte-chunks", statuses(411, 400, CLOSED), "a signed request sent as 1-byte chunks",
               odd_requests.raw(outside_attack.one_byte_chunks)),
        Attack("json-1m-keys", statuses(400, 413), "a body object of 1,000,000 keys (~12 MB)",
               body_of(lambda: odd_requests.many_keys(1_000_000))),
        Attack("idle-connections-many-addresses", statuses(CLOSED),
               "idle connections from many addresses: 180 x 60 (10,800) full size, 20 x 30 small",
               heavy.idle_from_many_addresses, heavy=True),
    ]
