"""The miner with front processes (`axon.processes: 2`), on loopback: what held with one process holds with two.

Requests are sent from many loopback addresses (127.0.0.x), as validators come from theirs: the kernel hands each
address to one front (neurons/caller_routing.py, with a secret mix), so sixteen addresses reach both fronts but
for a chance of 2^-15.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from sn72_lab.hostile.wire import HostileRequest, Target, build, send, send_raw
from sn72_lab.loadtest import drain
from sn72_lab.offline import run_miner
from sn72_lab.tiny_models import build_tiny_vit, build_tiny_yolo
from sn72_tools.client import encode_jpeg, synthetic_image
from tests.factories.cascades import level, vit_cascade, vit_expert
from tests.factories.dendrites import validator_wallets
from tests.factories.engine import wait_for
from tests.factories.metrics import axon_outcomes, families, miner_status
from tests.factories.processes import children_of, gone

pytestmark = pytest.mark.slow

SOURCES = [f"127.0.0.{i}" for i in range(2, 18)]
BURST = 5
PER_IP_CONNECTIONS = 3


def image(seed: int) -> str:
    return encode_jpeg(synthetic_image(seed, (96, 96)))


def fronts_of(miner_pid: int) -> list[int]:
    """The miner's front processes (its other children are decode or expert workers)."""
    return [pid for pid in children_of(miner_pid) if b"neurons.front" in Path(f"/proc/{pid}/cmdline").read_bytes()]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fronts")
    wallets, miner, callers = validator_wallets(folder, ["replayer", "limited", "plain", "mixed", "mixed2"])
    model = build_tiny_vit(folder / "models" / "tiny-vit")
    extra = {"axon": {"processes": 2, "max_connections_per_ip": PER_IP_CONNECTIONS},
             "guards": {"rate_per_s": 0.01, "burst": float(BURST)}, "scheduler": {"cache_size": 0}}
    with run_miner(folder, wallets, miner, vit_cascade(model, max_batch=8, max_wait_ms=2.0), extra=extra) as process:
        yield process, {w.name: w.hotkey for w in callers}


def target(process) -> Target:
    return Target("127.0.0.1", process.port, process.hotkey)


def test_two_fronts_serve_and_report_on_one_metrics_endpoint(served):
    process, signers = served
    assert len(fronts_of(process.process.pid)) == 2
    metrics = families(process.metrics_port)
    fronts = {s.labels["state"]: s.value for s in metrics["sn72_miner_fronts"].samples}
    assert fronts == {"alive": 2.0, "configured": 2.0}
    before = axon_outcomes(process.metrics_port)

    async def go() -> list:
        good = [send(HostileRequest(signer=signers["plain"], image=image(i), uuid=str(uuid.uuid4()),
                                    source_ip=source), target(process)) for i, source in enumerate(SOURCES[:4])]
        forged = [send(HostileRequest(signer=signers["plain"], image=image(9), signature="0x" + "00" * 64,
                                      source_ip=source), target(process)) for source in SOURCES[4:8]]
        return list(await asyncio.gather(*good, *forged))

    replies = asyncio.run(go())
    assert [r.status for r in replies] == [200] * 4 + [401] * 4, [(r.status, r.message) for r in replies]
    # counted in the miner process: answers by the core, refusals sent over by the fronts, each exactly once (a
    # caller can read its answer before the count lands: on a loaded box the test waits for both, then checks them)
    def answered(outcomes: dict) -> float:
        return sum(v - before.get(k, 0) for k, v in outcomes.items() if k.startswith("answered_"))

    def refused(outcomes: dict) -> float:
        return outcomes.get("refused_unverified", 0) - before.get("refused_unverified", 0)

    def counted() -> bool:
        now = axon_outcomes(process.metrics_port)
        return refused(now) >= 4 and answered(now) >= 4

    wait_for(counted, 5.0)
    after = axon_outcomes(process.metrics_port)
    assert answered(after) == 4, after
    assert refused(after) == 4, after
    latency = families(process.metrics_port)["sn72_miner_http_requests"]
    assert {s.labels["state"] for s in latency.samples} == {"active", "waiting"}
    # and how many it lets in at once, read against `active`: the default, 128 for each of the two fronts
    (slots,) = families(process.metrics_port)["sn72_miner_http_request_slots"].samples
    assert slots.value == 256
    # the fronts' own process figures beside the miner process's `process_*` (reported every second)
    wait_for(lambda: all(s.value > 20e6 for s in families(process.metrics_port)[
        "sn72_miner_front_resident_memory_bytes"].samples), 5.0)
    fds = {s.labels["front"]: s.value for s in families(process.metrics_port)["sn72_miner_front_open_fds"].samples}
    assert set(fds) == {"0", "1"} and all(value >= 3 for value in fds.values()), fds


def test_an_unknown_synapse_name_is_refused_by_the_guard_and_counted(served):
    process, _ = served
    before = axon_outcomes(process.metrics_port).get("refused_bad_path", 0)
    reply = asyncio.run(send_raw(target(process), b"POST /NotASynapse HTTP/1.1\r\nHost: m\r\nContent-Length: 0"
                                 b"\r\n\r\n", 5.0, SOURCES[0]))
    # bittensor's own 404 listed every synapse served and was counted nowhere
    assert reply.status == 404 and reply.message == "no such route: POST /NotASynapse", (reply.status, reply.body)
    wait_for(lambda: axon_outcomes(process.metrics_port).get("refused_bad_path", 0) == before + 1, 5.0)


# Each request's own outcome; the rest of sn72_miner_axon_total is about connections (closed_header_timeout, ...) or
# is counted beside a request's own outcome (late_answer, late_other; closed_refused_unread_body), docs/operations.md.
REQUEST_OUTCOMES = ("answered_", "refused_", "error_", "late_skipped", "closed_client_gone", "closed_front_died")


def requests_counted(outcomes: dict[str, float]) -> float:
    return sum(v for k, v in outcomes.items() if k.startswith(REQUEST_OUTCOMES))


def test_each_request_is_counted_once_by_its_own_outcome_and_a_late_one_as_late(served):
    """Answers, refusals of the guard, of the axon and of the engine, and requests past their deadline, from many
    addresses through both fronts: the requests sent are the sum of the request outcomes, and the late ones are
    counted late as well (the outside test of 5 December read 20 requests ending 408 as 28 outcomes)."""
    process, signers = served
    before = axon_outcomes(process.metrics_port)

    async def go() -> list:
        def at(index: int) -> str:
            return SOURCES[index % len(SOURCES)]

        sends = [send(HostileRequest(signer=signers["mixed"], image=image(300 + i), uuid=str(uuid.uuid4()),
                                     source_ip=at(i)), target(process)) for i in range(3)]
        sends += [send(HostileRequest(signer=signers["mixed"], image=image(310 + i), uuid=str(uuid.uuid4()),
                                      timeout_s=0.001, source_ip=at(3 + i)), target(process)) for i in range(2)]
        sends += [send(HostileRequest(signer=signers["mixed2"], image=image(320 + i), signature="0x" + "00" * 64,
                                      source_ip=at(5 + i)), target(process)) for i in range(2)]
        sends.append(send(HostileRequest(signer=signers["mixed2"], image="not an image", uuid=str(uuid.uuid4()),
                                         source_ip=at(7)), target(process)))
        sends.append(send_raw(target(process), b"POST /NotASynapse HTTP/1.1\r\nHost: m\r\nContent-Length: 0\r\n\r\n",
                              5.0, at(8)))
        return list(await asyncio.gather(*sends))

    replies = asyncio.run(go())
    statuses = [r.status for r in replies]
    assert statuses[:3] == [200] * 3 and statuses[5:] == [401, 401, 400, 404], [(r.status, r.message) for r in replies]

    def delta() -> dict[str, float]:
        after = axon_outcomes(process.metrics_port)
        return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}

    # reports reach the miner process a moment after their answers
    wait_for(lambda: requests_counted(delta()) >= len(replies), 5.0)
    time.sleep(0.3)
    counted = delta()
    assert requests_counted(counted) == len(replies), counted
    late = counted.get("late_answer", 0) + counted.get("late_other", 0) + counted.get("late_skipped", 0)
    assert late >= 2, counted  # the two sent with a 1 ms timeout, whichever way each ended


def test_a_replay_is_refused_exactly_once_whichever_front_sees_it(served):
    process, signers = served
    head, body = build(HostileRequest(signer=signers["replayer"], image=image(100)), target(process))

    async def go() -> list:
        return list(await asyncio.gather(*(send_raw(target(process), head + body, 15.0, source)
                                           for source in SOURCES)))

    replies = asyncio.run(go())
    statuses = sorted(str(r.status) for r in replies)
    assert statuses == ["200"] + ["401"] * (len(SOURCES) - 1), [(r.status, r.message) for r in replies]
    assert all("already used" in r.message for r in replies if r.status == 401), [r.message for r in replies]


def test_a_callers_rate_limit_is_one_bucket_across_fronts(served):
    process, signers = served

    async def go() -> list:
        return list(await asyncio.gather(*(
            send(HostileRequest(signer=signers["limited"], image=image(200 + i), uuid=str(uuid.uuid4()),
                                source_ip=source), target(process)) for i, source in enumerate(SOURCES))))

    statuses = sorted(str(r.status) for r in asyncio.run(go()))
    assert statuses == ["200"] * BURST + ["429"] * (len(SOURCES) - BURST), statuses


def test_per_address_connection_caps_hold_as_configured(served):
    """One address's connections all reach one front: its cap holds once, not once per front."""
    process, _ = served
    held = []
    try:
        for _ in range(3 * PER_IP_CONNECTIONS):
            sock = socket.socket()
            sock.bind(("127.0.0.99", 0))
            sock.connect(("127.0.0.1", process.port))
            held.append(sock)
        time.sleep(0.5)
        open_now = 0
        for sock in held:
            sock.setblocking(False)
            try:
                open_now += sock.recv(1) != b""  # data: not expected; b"": closed
            except BlockingIOError:
                open_now += 1  # nothing to read and not closed: still open
            except ConnectionError:
                pass
        assert open_now == PER_IP_CONNECTIONS
    finally:
        for sock in held:
            sock.close()


def test_a_front_ignores_sighup_reload_is_the_miner_process_s(served):
    process, _ = served
    front = fronts_of(process.process.pid)[0]
    os.kill(front, signal.SIGHUP)
    time.sleep(0.5)
    assert not gone(front) and front in fronts_of(process.process.pid)


def slow_cascade(models: Path) -> dict:
    """Level 1 never confident, so every request waits for a detector far slower than level 1, one at a time."""
    vit = build_tiny_vit(models / "tiny-vit")
    yolo = build_tiny_yolo(models / "tiny-yolo")
    return {"version": "fronts-e2e", "levels": [
        level(vit_expert(vit, max_batch=16, max_wait_ms=2.0), exit_margin=0.5),
        {"name": "slow", "exit_margin": 0.5, "experts": [
            {"name": "yolo", "backend": "detector", "model": str(yolo), "device": "cpu", "input_size": 320,
             "max_batch": 1, "max_wait_ms": 2.0, "options": {"classes": ["cone"]}}]},
    ]}


def test_a_killed_front_is_restarted_and_every_request_it_held_counted_once(tmp_path):
    wallets, miner, callers = validator_wallets(tmp_path, 1)
    # 4 request slots a front: most of a front's requests wait for one (the outside test found those uncounted)
    extra = {"axon": {"processes": 2, "max_concurrent_requests": 8}, "guards": {"rate_per_s": 0.0},
             "scheduler": {"cache_size": 0}}
    with run_miner(tmp_path, wallets, miner, slow_cascade(tmp_path / "models"), extra=extra) as process:
        signer = callers[0].hotkey
        first = fronts_of(process.process.pid)

        async def go() -> list:
            sent = [asyncio.ensure_future(send(HostileRequest(
                signer=signer, image=encode_jpeg(synthetic_image(300 + i, (640, 480))), uuid=str(uuid.uuid4()),
                source_ip=SOURCES[i % len(SOURCES)]), target(process), timeout_s=30.0)) for i in range(96)]
            await asyncio.sleep(0.5)  # taken in; the detector works through them one at a time (seconds)
            os.kill(first[0], signal.SIGKILL)
            return list(await asyncio.gather(*sent))

        before = axon_outcomes(process.metrics_port)
        replies = asyncio.run(go())
        statuses = [r.status for r in replies]
        assert set(statuses) <= {200, 408, "closed"} and "closed" in statuses, statuses
        wait_for(lambda: len(fronts_of(process.process.pid)) == 2 and
                 families(process.metrics_port)["sn72_miner_fronts"].samples[0].value == 2, 30.0)
        assert set(fronts_of(process.process.pid)) != set(first)
        replaced = (set(fronts_of(process.process.pid)) - set(first)).pop()
        # the operator reads when it serves again, and as which process (the outside operator's pass of 5 December)
        wait_for(lambda: f"front 0 serves again (pid {replaced})" in "\n".join(process.lines)
                 or f"front 1 serves again (pid {replaced})" in "\n".join(process.lines), 10.0)
        outcomes = axon_outcomes(process.metrics_port)
        # Every request the dead front had taken in (in the engine, being read, or waiting for a slot) counted once,
        # as its callers saw it: closed; and none of them counted as answered as well.
        assert outcomes.get("closed_front_died", 0) == statuses.count("closed"), (outcomes, statuses)
        answered = sum(v - before.get(k, 0) for k, v in outcomes.items() if k.startswith("answered_"))
        assert answered == statuses.count(200), (outcomes, statuses)
        restarts = families(process.metrics_port)["sn72_miner_front_restarts"].samples[0].value
        assert restarts == 1
        # /status names the processes that serve now, and which one was restarted (the outside review of 5 December)
        fronts = miner_status(process.metrics_port)["fronts"]
        assert {f["pid"] for f in fronts} == set(fronts_of(process.process.pid)), fronts
        assert [f["serving"] for f in fronts] == [True, True], fronts
        assert sorted((f["pid"] == replaced, f["restarts"]) for f in fronts) == [(False, 0), (True, 1)], fronts

        async def after() -> list:
            return list(await asyncio.gather(*(send(HostileRequest(
                signer=signer, image=image(400 + i), uuid=str(uuid.uuid4()), source_ip=source), target(process),
                timeout_s=30.0) for i, source in enumerate(SOURCES))))

        assert [r.status for r in asyncio.run(after())] == [200] * len(SOURCES)  # both fronts serve every address
        pids = fronts_of(process.process.pid)
        process.process.kill()  # the miner dies at once, with no chance to stop its fronts
        process.process.wait(10)
        wait_for(lambda: all(gone(pid) for pid in pids), 10.0)  # none outlives it


def test_sigterm_answers_every_accepted_request_through_the_fronts(tmp_path):
    wallets, miner, callers = validator_wallets(tmp_path, 2)
    extra = {"axon": {"processes": 2}, "guards": {"rate_per_s": 0.0}, "scheduler": {"cache_size": 0},
             "drain_timeout_s": 30.0}
    with run_miner(tmp_path, wallets, miner, slow_cascade(tmp_path / "models"), extra=extra) as process:
        pids = fronts_of(process.process.pid)
        requests = 20
        report, code = drain(process, callers, [encode_jpeg(synthetic_image(500 + i, (320, 240)))
                                                for i in range(requests)], timeout_s=20.0)
    assert code == 0
    assert report.valid == requests, report.as_dict()  # none refused, none disconnected
    drained = [line for line in process.lines if "drained:" in line]
    assert drained and "none left" in drained[0], process.lines[-20:]
    assert all(gone(pid) for pid in pids)


def test_a_frozen_front_is_killed_at_the_drain_timeout_and_the_stop_says_so(tmp_path):
    """A front stopped with SIGSTOP cannot drain: the miner kills it a second past drain_timeout_s and says the drain
    was incomplete because of it (not "0 still in the engine"); an explicit per-address cap above half a front's
    slots was lowered at start-up, and said."""
    wallets, miner, _ = validator_wallets(tmp_path, 1)
    extra = {"axon": {"processes": 2, "max_concurrent_requests": 16, "max_concurrent_requests_per_ip": 8},
             "scheduler": {"cache_size": 0}, "drain_timeout_s": 2.0}
    model = build_tiny_vit(tmp_path / "models" / "tiny-vit")
    with run_miner(tmp_path, wallets, miner, vit_cascade(model), extra=extra) as process:
        assert any("max_concurrent_requests_per_ip 8 is lowered to 4 with 2 front processes" in line
                   for line in process.lines), process.lines[-30:]
        frozen, other = fronts_of(process.process.pid)
        os.kill(frozen, signal.SIGSTOP)
        started = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        code = process.process.wait(30)
        took_s = time.monotonic() - started
    assert code == 0, process.lines[-20:]
    assert 2.0 < took_s < 8.0, took_s  # killed at round(2 s) + 1 s, not left to hang
    wait_for(lambda: any("drain incomplete" in line for line in process.lines), timeout_s=5.0)
    incomplete = [line for line in process.lines if "drain incomplete" in line]
    assert "a front process had to be killed" in incomplete[0] and "still in the engine" not in incomplete[0], \
        incomplete
    assert any(f"(pid {frozen}) did not finish draining in time: killed" in line for line in process.lines)
    assert gone(frozen) and gone(other)
