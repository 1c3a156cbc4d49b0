"""The attack catalogue: each entry is a named hostile or malformed request, the statuses that count as a correct
answer, and how it is sent. The red-team script runs them all; the security tests run them one by one.

Expected statuses follow the miner's contract (docs/security.md): unsigned or badly signed 401, strangers 403, a hotkey
over its rate 429, malformed requests 400 (401 where the signature or nonce check fails first), unknown routes
404, bodies over `axon.max_request_bytes` 413 (or the connection closed), slow clients 408 or closed, oversized
header blocks 400/431. Never 500, never a hang.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from sn72_lab.hostile import heavy, payloads
from sn72_lab.hostile.catalogue_second_pass import second_pass_attacks
from sn72_lab.hostile.model import Attack, Check, Context, Observation, Reply
from sn72_lab.hostile.wire import CLOSED, HostileRequest, build, send, send_raw
from sn72_tools.client import axon_info, make_dendrite, query

HOUR_NS = 3600 * 1_000_000_000
# What a refusal must not tell a stranger: module names, the package installer, internals.
LEAKY = re.compile(r"\bmodule\b|\bpip\b|pi[-_]heif|ultralytics|\binstall|traceback|\.py\b", re.IGNORECASE)


def single(make: Callable[[Context], HostileRequest]) -> Callable[[Context], Any]:
    async def run(context: Context) -> Observation:
        return Observation([Reply.of(await send(make(context), context.target))])

    return run


def signed(**tampers: Any) -> Callable[[Context], Any]:
    """A request signed by the attacker (a registered validator), with tampers."""
    return single(lambda c: HostileRequest(signer=c.attacker, **tampers))


def image_attack(data: Callable[[], bytes] | str, **tampers: Any) -> Callable[[Context], Any]:
    def make(context: Context) -> HostileRequest:
        image = data if isinstance(data, str) else payloads.b64(data())
        return HostileRequest(signer=context.attacker, image=image, **tampers)

    return single(make)


def through_dendrite(who: Callable[[Context], Any], image: Callable[[], str]) -> Callable[[Context], Any]:
    """Sent by a real bittensor dendrite, as a validator sends."""

    async def run(context: Context) -> Observation:
        keypair = who(context)
        if keypair is None:
            return Observation([Reply("skipped", "no such identity given")])
        dendrite = make_dendrite(keypair)
        try:
            axon = axon_info(context.target.host, context.target.port, context.target.miner_hotkey)
            outcome = await query(dendrite, axon, image())
        finally:
            await dendrite.aclose_session()
        return Observation([Reply(outcome.status_code, outcome.message, outcome.prediction, None, outcome.latency_s)])

    return run


async def replay(context: Context) -> Observation:
    head, body = build(HostileRequest(signer=context.attacker, image=payloads.b64(payloads.jpeg(3))), context.target)
    first = await send_raw(context.target, head + body)
    second = await send_raw(context.target, head + body)
    problems = [] if first.status == 200 else [f"the original request got {first.status}, not 200"]
    return Observation([Reply.of(second)], problems)


def old_nonce(timeout_header: str, age_ns: int = HOUR_NS) -> Callable[[Context], Any]:
    """Signed, but with a nonce from the past and a fresh dendrite uuid (the nonce window applies), raw timeout."""
    return single(lambda c: HostileRequest(
        signer=c.attacker, image=payloads.b64(payloads.jpeg(4)), nonce_ns=time.time_ns() - age_ns,
        uuid=str(uuid.uuid4()), timeout_header=timeout_header))


async def parallel_images(context: Context, data: bytes, count: int) -> Observation:
    image = payloads.b64(data)
    # A fresh dendrite uuid each: requests sent at once may arrive out of nonce order (bittensor refuses that).
    requests = [HostileRequest(signer=context.attacker, image=image, uuid=str(uuid.uuid4())) for _ in range(count)]
    responses = await asyncio.gather(*(send(request, context.target, timeout_s=30.0) for request in requests))
    return Observation([Reply.of(r) for r in responses])


# -- checks ------------------------------------------------------------------------------------------------------------
def says(text: str) -> Check:
    def check(_: Context, replies: list[Reply]) -> list[str]:
        return [f"message {r.message!r} does not say {text!r}" for r in replies if text not in r.message.lower()]

    return check


def leaks_nothing(_: Context, replies: list[Reply]) -> list[str]:
    return [f"message names {found.group(0)!r}: {r.message!r}" for r in replies
            if (found := LEAKY.search(r.message)) is not None]


def answered(_: Context, replies: list[Reply]) -> list[str]:
    """A 200 carries a probability in [0, 1] and not the image back."""
    problems = []
    for r in replies:
        if r.status != 200:
            continue
        if not isinstance(r.prediction, float | int) or math.isnan(r.prediction) or not 0 <= r.prediction <= 1:
            problems.append(f"prediction {r.prediction!r} is not in [0, 1]")
        if r.image not in (None, ""):
            problems.append(f"the answer carries the image back ({len(r.image)} characters)")
    return problems


def both(*checks: Check) -> Check:
    return lambda context, replies: [p for check in checks for p in check(context, replies)]


def rate_limited(context: Context, replies: list[Reply]) -> list[str]:
    limited = sum(1 for r in replies if r.status == 429)
    wanted = len(replies) - int(context.burst) - 8  # a few tokens refill while the flood is answered
    return [] if limited >= wanted else [f"{limited} of {len(replies)} got 429 (wanted >= {wanted})"]


def quick(limit_s: float) -> Check:
    return heavy.within(lambda _: limit_s)


def before_give_up(context: Context, replies: list[Reply]) -> list[str]:
    return heavy.within(lambda c: c.slow_give_up_s - 0.5)(context, replies)


# -- the catalogue -----------------------------------------------------------------------------------------------------
def jpeg_b64() -> str:
    return payloads.b64(payloads.jpeg(5))


def statuses(*values: int | str) -> frozenset[int | str]:
    return frozenset(values)


def catalogue() -> list[Attack]:
    ok = ok_image = statuses(200)
    bad, auth, forbidden = statuses(400), statuses(401), statuses(403)
    bad_or_auth, auth_or_forbidden = statuses(400, 401), statuses(401, 403)
    closed_or = statuses(CLOSED, 408)

    def unsigned(**tampers: Any) -> Callable[[Context], Any]:
        return single(lambda c: HostileRequest(claim_hotkey=c.validator_hotkey, image=jpeg_b64(), **tampers))

    attacks = [
        # identity, signature, nonce
        Attack("unsigned", auth, "no signature, claims the validator's hotkey", unsigned()),
        Attack("signed-by-another-key", auth, "signed by a stranger's key, claims the validator's hotkey",
               single(lambda c: HostileRequest(signer=c.stranger, claim_hotkey=c.validator_hotkey, image=jpeg_b64()))),
        Attack("garbage-signature", auth, "signature header 0xdeadbeef",
               single(lambda c: HostileRequest(claim_hotkey=c.validator_hotkey, signature="0xdeadbeef"))),
        Attack("signed-for-another-miner", auth, "validly signed for a different axon hotkey",
               single(lambda c: HostileRequest(signer=c.attacker, axon_hotkey=c.stranger.ss58_address))),
        Attack("replayed-nonce", auth, "the same signed request sent twice (the second is the attack)", replay),
        Attack("old-nonce-timeout-nan", auth, "nonce 1 h old, fresh uuid, timeout header nan", old_nonce("nan")),
        Attack("old-nonce-timeout-inf", auth, "nonce 1 h old, fresh uuid, timeout header inf", old_nonce("inf")),
        Attack("old-nonce-timeout-1e9", auth, "nonce 1 h old, fresh uuid, timeout header 1e9", old_nonce("1e9")),
        Attack("old-nonce-timeout-negative", auth, "nonce 1 h old, fresh uuid, timeout header -5", old_nonce("-5")),
        Attack("30s-old-nonce-timeout-1e9", auth, "nonce 30 s old (beyond 4 s + capped timeout), timeout 1e9",
               old_nonce("1e9", 30 * 1_000_000_000)),
        Attack("unknown-hotkey", forbidden, "real dendrite, a key not on the subnet",
               through_dendrite(lambda c: c.stranger, jpeg_b64)),
        Attack("non-validator", forbidden, "real dendrite, a registered key without a validator permit",
               through_dendrite(lambda c: c.non_validator, jpeg_b64)),
        Attack("no-caller-hotkey", auth_or_forbidden, "unsigned, no dendrite hotkey header",
               single(lambda c: HostileRequest(image=jpeg_b64()))),
        Attack("malformed-hotkey", auth_or_forbidden, "unsigned, dendrite hotkey 'abc'",
               single(lambda c: HostileRequest(claim_hotkey="abc", image=jpeg_b64()))),
        Attack("wrong-route", statuses(404), "POST /NotASynapse, signed", signed(route="NotASynapse")),
        Attack("ping-route-stranger", forbidden, "POST /Synapse (bittensor's default route), signed by a stranger",
               single(lambda c: HostileRequest(signer=c.stranger, route="Synapse", body=b"{}"))),
        Attack("ping-route-unsigned", auth_or_forbidden, "POST /Synapse, unsigned",
               single(lambda c: HostileRequest(claim_hotkey=c.stranger.ss58_address, route="Synapse", body=b"{}"))),
        # malformed requests from a registered validator
        Attack("body-not-json", bad, "body 'not json{'", signed(body=b"not json{")),
        Attack("body-json-array", bad, "body [1, 2]", signed(body=b"[1, 2]")),
        Attack("body-json-string", bad, 'body "image"', signed(body=b'"image"')),
        Attack("body-json-number", bad, "body 42", signed(body=b"42")),
        Attack("body-json-null", bad, "body null", signed(body=b"null")),
        Attack("image-is-a-number", bad, "image: 123", signed(fields={"image": 123})),
        Attack("image-is-a-list", bad, 'image: ["a"]', signed(fields={"image": ["a"]})),
        Attack("prediction-is-text", bad, 'prediction: "abc"', signed(image=jpeg_b64(), fields={"prediction": "abc"})),
        Attack("label-is-text", bad, 'testnet_label: "x"', signed(image=jpeg_b64(), fields={"testnet_label": "x"})),
        Attack("nonce-header-text", bad_or_auth, "bt_header_dendrite_nonce: abc",
               signed(headers={"bt_header_dendrite_nonce": "abc"})),
        Attack("timeout-header-text", bad_or_auth, "timeout: soon", signed(timeout_header="soon")),
        Attack("junk-bt-headers", bad_or_auth, "bt_header_dendrite_version zz, bt_header_input_obj_image !!!",
               signed(headers={"bt_header_dendrite_version": "zz", "bt_header_input_obj_image": "!!!"})),
        Attack("no-body-hash", bad_or_auth, "computed_body_hash header removed",
               signed(image=jpeg_b64(), headers={"computed_body_hash": None})),
        Attack("wrong-body-hash", bad_or_auth, "computed_body_hash of something else (the signature covers it)",
               single(lambda c: _signed_with_hash(c, "0" * 64))),
        Attack("empty-body", bad, "Content-Length 0", signed(body=b"")),
        Attack("get-without-body", bad, "GET /ImageSynapse, signed, no body", signed(method="GET", body=b"")),
        Attack("nan-prediction-bad-image", bad, "prediction NaN (raw JSON) and an image that is refused",
               signed(image="%%%", fields={"prediction": math.nan}), check=says("invalid base64")),
        Attack("infinity-prediction-good-image", ok, "prediction Infinity (raw JSON) and a good image",
               signed(image=jpeg_b64(), fields={"prediction": math.inf}), check=answered),
        # images
        Attack("bad-base64", bad, "image '%%% not base64 %%%'", image_attack("%%% not base64 %%%"),
               check=says("invalid base64")),
        Attack("not-an-image", bad, "base64 of plain text", image_attack(lambda: b"just some text, no pixels"),
               check=both(says("not a readable image"), leaks_nothing)),
        Attack("truncated-jpeg", bad, "the first half of a JPEG", image_attack(payloads.truncated_jpeg)),
        Attack("heic-like", bad, "an `ftypheic` box and junk (an iPhone photo to a sniffer)",
               image_attack(payloads.heic_like), check=leaks_nothing),
        Attack("png-bomb", bad, "20000x20000 one-colour PNG (1.2 GB of pixels in 1.2 MB)",
               image_attack(lambda: payloads.solid_png(20000, 20000)), check=both(says("limit"), quick(5.0))),
        Attack("png-bombs-parallel", bad, "4 such PNGs at once",
               lambda c: parallel_images(c, payloads.solid_png(20000, 20000), 4), heavy=True, check=quick(8.0)),
        Attack("large-pngs-parallel", ok_image, "3 one-colour 6000x6000 PNGs at once (above max_pixels: downscaled)",
               lambda c: parallel_images(c, payloads.solid_png(6000, 6000), 3), heavy=True, check=answered),
        Attack("gif", bad, "an animated GIF (not an accepted format)", image_attack(payloads.gif)),
        Attack("animated-png", ok_image, "an APNG of 3 frames", image_attack(payloads.animated_png), check=answered),
        Attack("animated-webp", ok_image, "a WebP of 3 frames", image_attack(payloads.animated_webp), check=answered),
        Attack("cmyk-jpeg", ok_image, "a CMYK JPEG", image_attack(payloads.cmyk_jpeg), check=answered),
        Attack("grey16-png", ok_image, "a 16-bit greyscale PNG", image_attack(payloads.grey16_png), check=answered),
        Attack("rgb48-png", ok_image, "a 16-bit-per-channel RGB PNG", image_attack(payloads.rgb48_png), check=answered),
        Attack("palette-png", ok_image, "a palette PNG", image_attack(payloads.palette_png), check=answered),
        Attack("rgba-png", ok_image, "an RGBA PNG", image_attack(payloads.rgba_png), check=answered),
        Attack("la-png", ok_image, "a grey+alpha PNG", image_attack(payloads.la_png), check=answered),
        Attack("exif-rotated-jpeg", ok_image, "a JPEG with EXIF orientation 6",
               image_attack(payloads.exif_rotated_jpeg), check=answered),
        # the HTTP layer
        Attack("declared-100MB-body", statuses(413), "signed headers with Content-Length 100 MB, body never sent",
               heavy.declared_huge_body, check=quick(4.0)),
        Attack("sent-100MB-body", statuses(413, CLOSED), "signed, 100 MB JSON body sent", heavy.huge_body,
               heavy=True),
        # 411: chunked bodies are refused from the head since 412b485 (a validator's dendrite sends a length)
        Attack("chunked-100MB-body", statuses(411, 413, CLOSED), "signed, 100 MB body in 1 MB chunks, no length",
               lambda c: heavy.huge_body(c, chunked=True), heavy=True),
        Attack("header-block-100KB", statuses(400, 431), "one 100 KB header line",
               lambda c: heavy.oversized_headers(c, [b"x-junk: " + b"a" * 100_000])),
        Attack("many-headers", statuses(400, 431), "2000 small header lines",
               lambda c: heavy.oversized_headers(c, [b"x-junk-%d: value" % i for i in range(2000)])),
        Attack("slow-headers", closed_or, "8 clients sending headers one byte a second", heavy.slow_headers,
               heavy=True, check=before_give_up),
        Attack("slow-body", closed_or, "2 signed requests whose body trickles one byte a second", heavy.slow_body,
               heavy=True, check=before_give_up),
        Attack("idle-connections", statuses(CLOSED), "1100 idle connections from one address",
               heavy.idle_connections, heavy=True, check=heavy.idle_check),
        # floods
        Attack("signed-flood-one-hotkey", statuses(200, 429), "burst + 20 signed requests at once, real dendrite",
               heavy.signed_flood, heavy=True, check=rate_limited),
        Attack("spoofed-validator-flood", auth, "unsigned requests claiming the validator's hotkey, 5/s for 20 s",
               heavy.spoofed_flood, heavy=True),
        Attack("refusal-flood", auth_or_forbidden, "500 refusals as fast as possible (unsigned, strangers)",
               heavy.refusal_flood, heavy=True),
    ]
    attacks += second_pass_attacks(single, image_attack, answered)
    names = [a.name for a in attacks]
    assert len(names) == len(set(names)), "attack names must be unique"
    return attacks


def _signed_with_hash(context: Context, body_hash: str) -> HostileRequest:
    """Signed over a computed_body_hash that does not match the body (the signature itself is valid)."""
    return HostileRequest(signer=context.attacker, image=jpeg_b64(), headers={"computed_body_hash": body_hash},
                          body_hash=body_hash)


def by_name() -> dict[str, Attack]:
    return {attack.name: attack for attack in catalogue()}
