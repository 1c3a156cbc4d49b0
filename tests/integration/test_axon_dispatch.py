"""`axon.dispatch: direct` answers as bittensor's own FastAPI app does, request for request.

Two real axons with the miner's handlers behind the HTTP guard on loopback, one serving through
neurons/axon_dispatch.py and one through bittensor's FastAPI app and middleware, the same wallet and the same engine
(a fake expert that answers at once). Every case is one set of bytes on the wire (signed by a real key, then
tampered with: sn72_lab/hostile/wire.py), sent to both; the answers must agree in status, JSON body and headers, all
but what differs between any two answers of one axon (the time, the axon's own nonce, signature, uuid and processing
time). A real dendrite then reads an answer from each.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cascade.config import ExpertConfig
from neurons.config import MinerConfig
from neurons.miner import Miner, serve
from sn72_lab.hostile.target import keypair
from sn72_lab.hostile.wire import HostileRequest, Response, Target, build, send, send_raw
from sn72_lab.offline import ensure_wallet, free_port
from tests.factories.dendrites import signed_query
from tests.factories.engine import FakeExpert, cascade_config, expert_config, make_engine, marked_payload, wait_for
from tests.factories.metagraph import StaticMetagraph, validators_snapshot

# What differs between two answers of the same axon to the same request: not the dispatch's to keep.
# The caller's port is its connection's (the error answers name it); the length follows the processing time.
_VOLATILE_HEADERS = {"date", "bt_header_axon_nonce", "bt_header_axon_signature", "bt_header_axon_uuid",
                     "bt_header_axon_process_time", "header_size", "bt_header_dendrite_port", "content-length"}
_VOLATILE_FIELDS = {"nonce", "signature", "uuid", "process_time"}


@dataclass
class Pair:
    direct: Target
    fastapi: Target
    servers: list[Any]
    miners: list[Miner]
    validator: Any
    stranger: Any


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    folder = tmp_path_factory.mktemp("dispatch")
    validator, stranger = keypair("dispatch-validator"), keypair("dispatch-stranger")
    miner_wallet = ensure_wallet(folder, "miner")
    snapshot = validators_snapshot(miner_wallet.hotkey.ss58_address, [validator])

    def factory(cfg: ExpertConfig, device: str) -> FakeExpert:
        return FakeExpert(cfg, device, answer=lambda image: 0.875)

    engine = make_engine({"a": factory}, cascade_config([[expert_config("a", max_batch=4, max_wait_ms=0.0,
                                                                        replicas=2, device="auto")]]), cache_size=0)
    targets, servers, miners = [], [], []
    for dispatch in ("direct", "fastapi"):
        port = free_port()
        config = MinerConfig.model_validate({
            "cascade_file": "unused.yaml",
            "axon": {"host": "127.0.0.1", "port": port, "external_ip": "127.0.0.1", "dispatch": dispatch},
        })
        miner = Miner(config, engine, StaticMetagraph(snapshot))
        servers.append(serve(config, miner_wallet, miner))
        miners.append(miner)
        targets.append(Target("127.0.0.1", port, miner_wallet.hotkey.ss58_address))
    try:
        yield Pair(targets[0], targets[1], servers, miners, validator, stranger)
    finally:
        for server in servers:
            server.stop(5.0)
        engine.close()


def _both(pair: Pair, request: HostileRequest) -> tuple[Response, Response]:
    """The same bytes to each axon (built for the direct one: the caller's view of the axon is in the body)."""
    head, body = build(request, pair.direct)
    return (asyncio.run(send_raw(pair.direct, head + body)), asyncio.run(send_raw(pair.fastapi, head + body)))


def _comparable(response: Response) -> tuple[Any, Any, dict[str, str]]:
    headers = {name: value for name, value in response.headers.items() if name not in _VOLATILE_HEADERS}
    try:
        body: Any = response.json()
    except ValueError:
        body = response.body
    if isinstance(body, dict):
        for terminal in ("axon", "dendrite"):
            if isinstance(body.get(terminal), dict):
                body[terminal] = {k: v for k, v in body[terminal].items() if k not in _VOLATILE_FIELDS}
    return response.status, body, headers


def _request(pair: Pair, **tamper: Any) -> HostileRequest:
    signer = tamper.pop("signer", pair.validator)
    image = tamper.pop("image", marked_payload(1, seed=int(time.monotonic_ns() % 10_000)))
    return HostileRequest(signer=signer, image=image, uuid=str(uuid.uuid4()), **tamper)


CASES: dict[str, dict[str, Any]] = {
    "answered": {},
    "answered, the extended synapse": {"route": "ExtendedImageSynapse"},
    "answered, GET": {"method": "GET"},
    "ping route": {"route": "Synapse", "image": ""},
    "not an image": {"image": "bm90IGFuIGltYWdl"},
    "empty image": {"image": ""},
    "testnet label sent": {"fields": {"testnet_label": 1}},
    "bad signature": {"signature": "0x" + "00" * 64},
    "signed for another axon": {"axon_hotkey": "5C4hrfjw9DjXZTzV3MwzrrAr9P1MJhSrvWGWqi1eSuyUpnhM"},
    "nonce a month old": {"nonce_ns": time.time_ns() - 30 * 86400 * 10**9},
    "not a validator": {"signer": "stranger"},
    "unsigned": {"signer": None, "claim_hotkey": "5C4hrfjw9DjXZTzV3MwzrrAr9P1MJhSrvWGWqi1eSuyUpnhM"},
    "timeout header not a number": {"timeout_header": "soon"},
    "no caller hotkey header": {"headers": {"bt_header_dendrite_hotkey": None}},
    "no nonce header": {"headers": {"bt_header_dendrite_nonce": None}},
    "body hash signed over another body": {"body_hash": "0" * 64},
    "body field NaN": {"fields": {"timeout": float("nan")}},
    "body field of the wrong type": {"fields": {"testnet_label": "yes"}},
    "body a JSON list": {"body": b"[1, 2]"},
    "body empty": {"body": b""},
}


@pytest.mark.parametrize("case", list(CASES))
def test_direct_dispatch_answers_as_the_fastapi_app(pair: Pair, case: str) -> None:
    tamper = dict(CASES[case])
    if tamper.get("signer") == "stranger":
        tamper["signer"] = pair.stranger
    direct, fastapi = _both(pair, _request(pair, **tamper))
    assert isinstance(direct.status, int), (case, direct)
    expected = _comparable(fastapi)
    got = _comparable(direct)
    assert got[:2] == expected[:2], case
    assert {k: (v, expected[2].get(k)) for k, v in got[2].items() if expected[2].get(k) != v} == {}, case
    assert got[2].keys() == expected[2].keys(), case


def test_a_replay_is_refused_by_each_dispatch_alike(pair: Pair) -> None:
    head, body = build(_request(pair), pair.direct)
    first = [asyncio.run(send_raw(target, head + body)) for target in (pair.direct, pair.fastapi)]
    again = [asyncio.run(send_raw(target, head + body)) for target in (pair.direct, pair.fastapi)]
    assert [r.status for r in first] == [200, 200]
    assert [r.status for r in again] == [401, 401]
    assert _comparable(again[0]) == _comparable(again[1])


def test_a_handler_failure_is_the_same_500(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward function that raises: bittensor's middleware answers 500 from the synapse; so does the direct one."""
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the handler broke")

    for miner in pair.miners:
        monkeypatch.setattr(miner.core, "answer", broken)
    direct, fastapi = _both(pair, _request(pair))
    assert direct.status == 500

    def without_error_id(response: Response) -> tuple[Any, Any, dict[str, str]]:
        # The message carries a fresh error id per answer: its words must agree, not the id.
        status, body, headers = _comparable(response)
        headers["bt_header_axon_status_message"] = headers["bt_header_axon_status_message"].split("#")[0]
        return status, body["message"].split("#")[0], headers

    assert without_error_id(direct) == without_error_id(fastapi)
    assert without_error_id(direct)[1] == "Internal Server Error "


def test_a_real_dendrite_reads_the_direct_answer(pair: Pair) -> None:
    answers = [asyncio.run(signed_query(pair.validator, target.port, target.miner_hotkey, marked_payload(3)))
               for target in (pair.direct, pair.fastapi)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].prediction == answers[1].prediction and 0.0 <= answers[0].prediction <= 1.0


def test_the_shipped_default_is_direct() -> None:
    assert MinerConfig.model_validate({"cascade_file": "x.yaml"}).axon.dispatch == "direct"
    with pytest.raises(ValueError):
        MinerConfig.model_validate({"cascade_file": "x.yaml", "axon": {"dispatch": "starlette"}})


def _with_content_type(head: bytes, value: bytes | None) -> bytes:
    line = b"Content-Type: application/json\r\n"
    return head.replace(line, b"" if value is None else b"Content-Type: " + value + b"\r\n")


@pytest.mark.parametrize("content_type", [b"text/plain", b"application/octet-stream", b"", None])
def test_a_body_sent_as_another_content_type(pair: Pair, content_type: bytes | None) -> None:
    """A signed body whose Content-Type is not JSON (no dendrite sends one): the direct dispatch reads it as the
    JSON its signed hash names and answers; bittensor's app answers 500 (FastAPI hands the handler bytes)."""
    head, body = build(_request(pair), pair.direct)
    data = _with_content_type(head, content_type) + body
    direct = asyncio.run(send_raw(pair.direct, data))
    fastapi = asyncio.run(send_raw(pair.fastapi, data))
    assert direct.status == 200 and 0.0 <= direct.json()["prediction"] <= 1.0, direct
    # bittensor's app with bittensor 10.5 and FastAPI 0.165: "'bytes' object does not support item assignment", a
    # 500 (docs/security.md says so for `axon.dispatch: fastapi`).
    assert fastapi.status == 500, fastapi


@pytest.mark.parametrize("label,part,key,value", [
    ("the caller's uuid, a euro sign", "dendrite", "uuid", "\u20ac"),
    ("the caller's ip, an emoji", "dendrite", "ip", "\U0001F4A9"),
    ("the status message, CR LF and a header", "axon", "status_message", "x\r\nX-Injected: 1"),
    ("the status message, a leading space", "axon", "status_message", " Success"),
])
def test_body_fields_no_header_can_carry_are_not_echoed(pair: Pair, label: str, part: str, key: str,
                                                        value: str) -> None:
    """The answer echoes the body's `axon` and `dendrite` fields as headers: a value no header can carry made a
    computed answer fail (500, or the connection closed unanswered with a CR LF). Now the field is left out of the
    answer, which is 200 in both dispatches and alike."""
    request = _request(pair)
    synapse = json.loads(build(request, pair.direct)[1])
    request.fields = {part: {**synapse[part], key: value}}
    direct, fastapi = _both(pair, request)
    assert direct.status == 200, (label, direct)
    assert "x-injected" not in direct.headers
    assert _comparable(direct)[:2] == _comparable(fastapi)[:2], label
    # Left out; a 200's empty status message is bittensor's "Success".
    assert direct.json()[part][key] == ("Success" if key == "status_message" else None), label


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"prediction": "x"', b"   "])
def test_every_malformed_body_is_counted_once(pair: Pair, body: bytes) -> None:
    """400s from the body check were counted nowhere (an outside finding: 30 requests, no outcome moved)."""
    for miner, target in zip(pair.miners, (pair.direct, pair.fastapi), strict=True):
        before = miner.outcomes.get("refused_malformed")
        answer = asyncio.run(send(_request(pair, body=body), target))
        assert answer.status == 400, answer
        wait_for(lambda m=miner, b=before: m.outcomes.get("refused_malformed") >= b + 1, 5.0)
        time.sleep(0.05)
        assert miner.outcomes.get("refused_malformed") == before + 1
