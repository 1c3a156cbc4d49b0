"""Nonce freshness and replays against the real miner (the second red-team pass, docs/security.md).

bittensor 10.5's `Axon.default_verify` applies its age window only when the unsigned `bt_header_dendrite_version`
header claims bittensor >= 7.2 (none at all without the header), and wants each nonce larger than the last one of
its hotkey and uuid. The miner's rule (neurons/nonces.py, docs/security.md): every nonce within the window
(`axon.nonce_max_age_s` back, `axon.nonce_future_s` ahead) whatever the headers say, each one once, any order.

Requests are built by a real bittensor dendrite and signed by the caller's key (sn72_lab/hostile/wire.py); a tamper
re-signs, so only the nonce and the unsigned headers differ from what a validator sends.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest

from sn72_lab.hostile import payloads
from sn72_lab.hostile.wire import HostileRequest, Response, build, send, send_raw

pytestmark = [pytest.mark.security, pytest.mark.slow]  # every test here attacks the miner subprocess

NS_PER_S = 1_000_000_000
OLD_VERSION = "7001000"  # bittensor 7.1.0 as `version_as_int` writes it: below the 7.2.0 that bittensor checks for
AGES_S = {"30 s": 30, "1 h": 3600, "30 days": 30 * 86_400}
VERSION_HEADERS: dict[str, dict[str, str | None]] = {
    "old version": {"bt_header_dendrite_version": OLD_VERSION},
    "no version": {"bt_header_dendrite_version": None},
    "current version": {},
}


def image(seed: int) -> str:
    return payloads.b64(payloads.jpeg(seed))


def header(head: bytes, name: str) -> str:
    found = re.search(rb"\r\n" + name.encode() + rb": ([^\r]*)\r\n", head)
    assert found, f"no {name} header"
    return found.group(1).decode()


def with_version(head: bytes, version: str) -> bytes:
    """The same signed request with only its (unsigned) version header changed."""
    current = header(head, "bt_header_dendrite_version")
    return head.replace(f"bt_header_dendrite_version: {current}\r\n".encode(),
                        f"bt_header_dendrite_version: {version}\r\n".encode())


def signed_at(hostile, nonce_ns: int, versions: str = "current version", seed: int = 7) -> HostileRequest:
    """Signed by a registered validator at `nonce_ns` (a fresh dendrite uuid: no earlier nonce to compare with)."""
    return HostileRequest(signer=hostile.prober(), image=image(seed), nonce_ns=nonce_ns, uuid=str(uuid.uuid4()),
                          headers=dict(VERSION_HEADERS[versions]))


def run(request: HostileRequest, hostile) -> Response:
    return asyncio.run(send(request, hostile.target))


@pytest.mark.parametrize("versions", ["old version", "no version"])
@pytest.mark.parametrize("age", list(AGES_S))
def test_a_stale_request_is_refused_whatever_version_it_claims(hostile, age, versions):
    """Failed before: bittensor skipped the age window for these, and the miner answered 200."""
    response = run(signed_at(hostile, time.time_ns() - AGES_S[age] * NS_PER_S, versions), hostile)
    assert response.status == 401, (response.status, response.message)
    assert "too old" in response.message, response.message


@pytest.mark.parametrize("age", list(AGES_S))
def test_a_stale_request_with_the_current_version_is_refused(hostile, age):
    response = run(signed_at(hostile, time.time_ns() - AGES_S[age] * NS_PER_S), hostile)
    assert response.status == 401, (response.status, response.message)


@pytest.mark.parametrize("versions", list(VERSION_HEADERS))
def test_a_fresh_request_is_answered_whatever_version_it_claims(hostile, versions):
    response = run(signed_at(hostile, time.time_ns(), versions), hostile)
    assert response.status == 200, (response.status, response.message)


def test_a_nonce_too_far_ahead_is_refused_and_one_within_the_allowance_is_answered(hostile):
    """A caller's clock may run `axon.nonce_future_s` (4 s) ahead of ours, not a minute."""
    ahead = run(signed_at(hostile, time.time_ns() + 60 * NS_PER_S), hostile)
    assert ahead.status == 401 and "future" in ahead.message, (ahead.status, ahead.message)
    slightly = run(signed_at(hostile, time.time_ns() + 1 * NS_PER_S), hostile)
    assert slightly.status == 200, (slightly.status, slightly.message)


def test_an_exact_replay_is_refused_once_the_first_was_answered_whatever_version_it_claims(hostile):
    head, body = build(HostileRequest(signer=hostile.prober(), image=image(11)), hostile.target)

    async def original_then_replays() -> list[Response]:
        first = await send_raw(hostile.target, head + body)
        replays = [await send_raw(hostile.target, data + body) for data in
                   (head, with_version(head, OLD_VERSION), with_version(head, "0"))]
        return [first, *replays]

    first, *replays = asyncio.run(original_then_replays())
    assert first.status == 200, (first.status, first.message)
    assert [r.status for r in replays] == [401] * 3, [(r.status, r.message) for r in replays]


def test_requests_of_one_dendrite_arriving_out_of_nonce_order_are_all_answered(hostile):
    """Failed before: bittensor wants each nonce larger than the last of its hotkey and uuid ("Nonce is too old")."""
    signer = hostile.prober()
    built = [build(HostileRequest(signer=signer, image=image(20 + i)), hostile.target) for i in range(4)]
    nonces = [int(header(head, "bt_header_dendrite_nonce")) for head, _ in built]
    uuids = {header(head, "bt_header_dendrite_uuid") for head, _ in built}
    assert nonces == sorted(nonces) and len(set(nonces)) == 4 and len(uuids) == 1  # one dendrite, in order

    async def newest_first() -> list[Response]:
        return [await send_raw(hostile.target, head + body) for head, body in reversed(built)]

    responses = asyncio.run(newest_first())
    assert [r.status for r in responses] == [200] * 4, [(r.status, r.message) for r in responses]


def test_stale_requests_spend_nothing_of_the_callers_rate_budget(hostile):
    """Failed before: 25 requests signed 30 s earlier were answered and charged, so the caller's own got 429."""
    signer = hostile.prober()
    stale = [HostileRequest(signer=signer, image=image(40), nonce_ns=time.time_ns() - 30 * NS_PER_S,
                            uuid=str(uuid.uuid4()), headers={"bt_header_dendrite_version": OLD_VERSION})
             for _ in range(25)]

    async def stale_then_fresh() -> tuple[list[Response], list[Response]]:
        refused = await asyncio.gather(*(send(request, hostile.target) for request in stale))
        fresh = [await send(HostileRequest(signer=signer, image=image(60 + i)), hostile.target) for i in range(15)]
        return list(refused), fresh

    refused, fresh = asyncio.run(stale_then_fresh())
    assert {r.status for r in refused} == {401}, sorted(str(r.status) for r in refused)
    assert [r.status for r in fresh] == [200] * 15, [(r.status, r.message) for r in fresh]
