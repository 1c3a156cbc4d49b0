"""The HTTP layer under the axon: body size, header and body read timeouts, connection caps, descriptors.

The miner runs with axon.max_request_bytes 16 MB, header_timeout_s 2, body_timeout_s 2, max_connections_per_ip 64
(sn72_lab/hostile/target.py TEST_HTTP_LIMITS). Connection-heavy attacks come from 127.0.0.2, the honest validator
from 127.0.0.1, so a per-address cap must stop the one and not the other. Issue 25: WebSocket upgrades (each one
kept its address's connection slot for good) and odd unsigned requests the stock axon answered 500 or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from sn72_lab.hostile.target import TEST_HTTP_LIMITS, known_axon_keys
from sn72_lab.hostile.wire import CLOSED, HostileRequest, build, connect, send, send_raw
from sn72_tools.client import encode_jpeg, synthetic_image
from tests.factories.engine import wait_for

pytestmark = [pytest.mark.security, pytest.mark.slow]  # every test here attacks the miner subprocess

HEADER_TIMEOUT_S = TEST_HTTP_LIMITS["header_timeout_s"]
BODY_TIMEOUT_S = TEST_HTTP_LIMITS["body_timeout_s"]
PER_IP = TEST_HTTP_LIMITS["max_connections_per_ip"]
SLACK_S = 2.5  # a loaded 2-core machine


def attack_beside_validator(hostile, name, **overrides):
    """The attack, with every honest request sent meanwhile answered."""
    observation, stats = hostile.attack_beside_validator(name, **overrides)
    assert stats.sent >= 2 and stats.answered == stats.sent, f"the validator during {name}: {stats.summary()}"
    return observation


def test_the_configuration_has_the_http_limits():
    missing = sorted(set(TEST_HTTP_LIMITS) - known_axon_keys())
    assert not missing, f"axon config keys missing: {missing}"


def test_the_miner_raises_its_own_open_files_limit(hostile):
    """Started with the default soft limit of 1024 (the hard limit is higher), the miner raises it itself."""
    line = next(x for x in Path(f"/proc/{hostile.pid}/limits").read_text().splitlines()
                if x.startswith("Max open files"))
    soft, hard = (int(v) if v.isdigit() else float("inf") for v in line.split()[3:5])
    assert hard > 1024, "this machine's hard limit leaves nothing to raise"
    assert soft > 1024, line


def test_bodies_over_the_limit_are_refused(hostile):
    observation = attack_beside_validator(hostile, "sent-100MB-body")
    assert not observation.problems, (observation.problems, observation.statuses())


def test_a_chunked_100MB_body_is_refused_from_its_head(hostile):
    """No chunked body is read any more (1-byte chunks starved the event loop): 411 from the head, or the connection
    closed while the 100 MB were still being written. NOTE: the catalogue's entry still expects 413 or closed."""
    observation = attack_beside_validator(hostile, "chunked-100MB-body")
    assert {r.status for r in observation.replies} <= {411, CLOSED}, observation.statuses()


def test_slow_headers_are_cut_off_after_the_header_timeout(hostile):
    observation = attack_beside_validator(hostile, "slow-headers", slow_give_up_s=HEADER_TIMEOUT_S + 6)
    assert not observation.problems, (observation.problems, observation.statuses())
    slowest = max(r.elapsed_s for r in observation.replies)
    assert slowest <= HEADER_TIMEOUT_S + SLACK_S, f"slow clients held their connection {slowest:.1f} s"


def test_a_trickled_body_is_cut_off_after_the_body_timeout(hostile):
    observation = attack_beside_validator(hostile, "slow-body", slow_give_up_s=BODY_TIMEOUT_S + 6)
    assert not observation.problems, (observation.problems, observation.statuses())
    slowest = max(r.elapsed_s for r in observation.replies)
    assert slowest <= BODY_TIMEOUT_S + SLACK_S, f"a trickled body held its connection {slowest:.1f} s"


def test_idle_connections_beyond_the_per_address_cap_are_closed_at_once(hostile, many_descriptors):
    since = len(hostile.log())
    observation = attack_beside_validator(hostile, "idle-connections", idle_connections=1100,
                                          max_connections_per_ip=PER_IP, slow_give_up_s=HEADER_TIMEOUT_S + 6)
    assert not observation.problems, (observation.problems, observation.statuses())
    assert all(r.status == CLOSED for r in observation.replies)
    assert not [line for line in hostile.log(since) if "Too many open files" in line]


UPGRADE_FROM = "127.0.0.5"  # an address of its own: a leak there must not close other tests' connections
UPGRADE = b"GET /ImageSynapse HTTP/1.1\r\nHost: miner\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def test_protocol_upgrades_are_refused_and_release_their_connection_slot(hostile):
    """More WebSocket upgrades from one address than its connection cap, one after another: each refused 400,
    and a validator's request from that address is still answered (every upgrade used to keep its slot)."""
    before = hostile.refusals().get("refused_upgrade", 0)

    async def upgrades() -> list[int | str]:
        return [(await send_raw(hostile.target, UPGRADE, 5.0, UPGRADE_FROM)).status for _ in range(PER_IP + 8)]

    statuses = asyncio.run(upgrades())
    assert statuses == [400] * (PER_IP + 8), statuses
    request = HostileRequest(signer=hostile.prober(), image=encode_jpeg(synthetic_image(77)), source_ip=UPGRADE_FROM)
    answered = asyncio.run(send(request, hostile.target))
    assert answered.status == 200, (answered.status, answered.message)
    assert hostile.refusals().get("refused_upgrade", 0) - before == PER_IP + 8


async def status_line(target, data: bytes, timeout_s: float = 5.0) -> int | str:
    """The status of the first response line (HEAD answers have no body to read), CLOSED if the server hangs up."""
    reader, writer = await connect(target)
    try:
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
    except (ConnectionError, TimeoutError):
        return CLOSED
    finally:
        writer.close()
    parts = line.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else CLOSED


def odd(hostile, path: str = "/ImageSynapse", method: str = "POST", **headers: str) -> bytes:
    """A request as a validator's would be (unsigned, claiming the validator) with one part made odd."""
    request = HostileRequest(claim_hotkey=hostile.cast.validator.hotkey.ss58_address, image="AAAA", headers=headers)
    head, body = build(request, hostile.target)
    head = head.replace(b"POST /ImageSynapse ", f"{method} {path} ".encode(), 1)
    return head + body


ODD_REQUESTS = {  # name: (how the request is odd, the answers allowed, the counter that must count it)
    "nonce-of-400-digits": ({"bt_header_dendrite_nonce": "9" * 400}, (400, 401), "refused_unverified"),
    "path-not-utf8": ({"path": "/%ff"}, (404,), "refused_bad_path"),
    "path-overlong-slash": ({"path": "/Image%C0%AFSynapse"}, (404,), "refused_bad_path"),
    "path-emoji": ({"path": "/%F0%9F%92%A9"}, (404,), "refused_bad_path"),
    "path-nul": ({"path": "/ImageSynapse%00"}, (404,), "refused_bad_path"),
    "head": ({"method": "HEAD"}, (405,), "refused_method"),
    "delete": ({"method": "DELETE"}, (405,), "refused_method"),
}


@pytest.mark.parametrize("name", sorted(ODD_REQUESTS))
def test_odd_requests_are_refused_with_a_4xx_and_counted(hostile, name):
    """Unsigned requests the stock axon answered 500 (or closed unanswered): a 4xx each, counted by reason."""
    odd_parts, allowed, outcome = ODD_REQUESTS[name]
    shape = {key: odd_parts[key] for key in ("path", "method") if key in odd_parts}
    headers = {key: value for key, value in odd_parts.items() if key not in shape}
    before = hostile.refusals()
    status = asyncio.run(status_line(hostile.target, odd(hostile, **shape, **headers)))
    assert status in allowed, f"{name}: {status}"
    # With front processes the count reaches the miner process a moment after the answer: waited for, bounded.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: hostile.refusals().get(outcome, 0) > before.get(outcome, 0), 5.0)
    after = hostile.refusals()
    assert after.get(outcome, 0) - before.get(outcome, 0) == 1, {k: after[k] - before.get(k, 0) for k in after}
    assert after.get("error_500", 0) == before.get("error_500", 0)


@pytest.mark.parametrize("value", ["nan", "inf", "9" * 400])
def test_a_body_timeout_that_is_not_a_finite_number_is_refused_400(hostile, value):
    """Found by the fuzzer: the body's own `timeout` (signed requests reach the body) made the axon's JSON encoder
    fail when it answered (500 after the image was judged)."""
    request = HostileRequest(signer=hostile.prober(), image=encode_jpeg(synthetic_image(78)), fields={"timeout": value})
    reply = asyncio.run(send(request, hostile.target))
    assert reply.status == 400 and "timeout" in reply.message, (reply.status, reply.message)
