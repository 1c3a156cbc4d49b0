"""The miner served in process for the fuzzer, and the property every fuzzed request must keep.

The real request path: uvicorn's h11 protocol with the miner's connection guard, the HTTP guard, bittensor's
axon with the miner's hardening, guards, verification and nonce rule, and the engine with its decoder. Only the
model is missing: an expert that answers 0.9 for whatever it is given, after the image was decoded.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurons.http_guard import CLIENT_GONE
from sn72_lab.fuzz.cases import Case, case_from_bytes
from sn72_lab.hostile.wire import CLOSED, NO_ANSWER, HostileRequest, Response, Target, build, connect, send_raw

ALLOWED = frozenset({200, 400, 401, 403, 404, 405, 408, 411, 413, 429, 431})  # 411: chunked bodies
HTTP_LIMITS = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "max_header_bytes": 16 * 1024,
               "max_request_bytes": 48 << 20, "max_connections_per_ip": 1024}


class PropertyBroken(AssertionError):
    """A fuzzed request broke the property: the message says which request and what came back."""


class _StaticMetagraph:
    def __init__(self, snapshot: Any) -> None:
        self.snapshot = snapshot


def _null_factory(config: Any, device: str) -> Any:
    from cascade.experts.base import Expert

    class DecodedNull(Expert):
        """Takes decoded images (no `jpeg_decoder`: every image goes through cascade/decode.py) and answers 0.9."""

        def load(self) -> None:
            pass

        def predict_batch(self, images: Sequence[Any]) -> list[float]:
            return [0.9] * len(images)

        def memory_bytes(self) -> int:
            return 0

    return DecodedNull(config, device)


class FuzzTarget:
    """A miner on loopback; `check(data)` sends the request `data` chooses and raises PropertyBroken if it breaks."""

    def __init__(self, folder: Path | None = None) -> None:
        from cascade.config import CascadeConfig, EngineConfig, ExpertConfig, LevelConfig, SchedulerConfig
        from cascade.engine import Engine
        from cascade.process_settings import start_with_process_settings
        from neurons.chain import MetagraphSnapshot, Neuron
        from neurons.config import MinerConfig
        from neurons.miner import Miner, serve
        from neurons.outcomes import quiet_bittensor_request_logs
        from sn72_lab.hostile.target import keypair
        from sn72_lab.offline import ensure_wallet, free_port

        folder = folder or Path(tempfile.mkdtemp(prefix="sn72-fuzz-"))
        self.signers = [keypair(f"fuzz-validator-{i}") for i in range(3)]
        self.stranger = keypair("fuzz-stranger")
        wallet = ensure_wallet(folder, "miner")
        snapshot = MetagraphSnapshot.of(72, [Neuron(0, wallet.hotkey.ss58_address, False, 0.0)] + [
            Neuron(i + 1, signer.ss58_address, True, 1000.0) for i, signer in enumerate(self.signers)])
        port = free_port()
        config = MinerConfig.model_validate({
            "cascade_file": "unused.yaml", "guards": {"rate_per_s": 0.0}, "summary_interval_s": 3600.0,
            "axon": {"host": "127.0.0.1", "port": port, "external_ip": "127.0.0.1", **HTTP_LIMITS},
        })
        expert = ExpertConfig(name="null", backend="hf_classifier", model="fuzz/null", device="cpu", max_batch=4,
                              max_wait_ms=0.0, warmup_batches=0, expected_latency_ms=1.0)
        cascade = CascadeConfig(version="fuzz", prior=0.5, levels=[LevelConfig(name="L0", experts=[expert])])
        self.engine = Engine(EngineConfig(cascade=cascade, scheduler=SchedulerConfig(cache_size=0)),
                             expert_factory=_null_factory)
        start_with_process_settings(self.engine)  # as the miner starts it
        quiet_bittensor_request_logs()  # as the miner does: one ERROR line per refusal would drown the report
        metagraph: Any = _StaticMetagraph(snapshot)  # a fixed snapshot stands in for the chain
        self.miner = Miner(config, self.engine, metagraph)
        self.reports: list[int] = []  # the status of every request the HTTP guard reported, in order
        counted = self.miner.on_response

        def recording(state: Any) -> None:
            self.reports.append(state.status)
            counted(state)

        self.miner.on_response = recording  # type: ignore[method-assign]
        self.server = serve(config, wallet, self.miner)
        self.target = Target("127.0.0.1", port, wallet.hotkey.ss58_address)
        self.loop = asyncio.new_event_loop()
        self.sent = 0
        self._one_request = True

    def case(self, data: bytes) -> Case:
        return case_from_bytes(data, self.signers, self.stranger, self.target.miner_hotkey)

    def send(self, request: HostileRequest) -> Response:
        if request.nonce_ns is not None and abs(request.nonce_ns) < 10**30:
            request.nonce_ns += time.time_ns()  # cases carry nonces relative to the time of sending
        head, body = build(request, self.target)
        self.sent += 1
        if request.method == "HEAD":  # an answer to HEAD has no body, whatever its Content-Length says
            return self.loop.run_until_complete(status_only(self.target, head + body, timeout_s=5.0))
        return self.loop.run_until_complete(send_raw(self.target, head + body, timeout_s=5.0))

    def check(self, data: bytes) -> Response:
        """Send the request `data` chooses; raise PropertyBroken unless it was answered below 500, as it should be."""
        case = self.case(data)
        # One request per connection (a body longer than its declared length would otherwise be read as a second
        # request, answered after this check moved on), unless the case made the Connection header odd itself.
        case.request.headers.setdefault("connection", "close")
        self._wait_idle()
        errors_before, reported = self.miner.outcomes.get("error_500"), len(self.reports)
        self._one_request = case.request.headers["connection"] == "close"
        response = self.send(case.request)
        problem = self._problem(case, response)
        if problem is None:
            problem = self._reported_once(response, reported)
        if problem is None and self.miner.outcomes.get("error_500") != errors_before:
            problem = "the miner counted an internal error (error_500) for it"
        if problem is not None:
            raise PropertyBroken(f"{problem}\n  request: {describe(case.request)}\n  answer: {response.status} "
                                 f"{response.body[:300]!r}")
        return response

    def _wait_idle(self, limit_s: float = 5.0) -> None:
        """Until the server runs no request task: every request sent so far has been reported (the report is the
        last step of a task, and uvicorn creates the task once a head is whole, before anything can refuse the rest)."""
        tasks = self.server.server.server_state.tasks
        until_s = time.monotonic() + limit_s
        while tasks and time.monotonic() < until_s:
            time.sleep(0.001)

    def _reported_once(self, response: Response, reported: int) -> str | None:
        """The HTTP guard reports every request it saw exactly once, with the status the client got. Requests that
        h11 refuses before their head is whole (uvicorn's own plain-text 400) never reach it; one whose rest h11
        refused ends unanswered (reported 499) while the client reads uvicorn's 400."""
        self._wait_idle()
        seen = self.reports[reported:]
        if response.headers.get("content-type", "").startswith("text/plain"):
            return None if seen in ([], [CLIENT_GONE]) else f"reported as {seen} for uvicorn's own 400"
        if len(seen) < 1 or (len(seen) > 1 and self._one_request):
            return f"reported {len(seen)} times ({seen}), expected once"
        if seen[0] != response.status:
            return f"reported as {seen[0]}, answered {response.status}"
        return None

    @staticmethod
    def _problem(case: Case, response: Response) -> str | None:
        if response.status == NO_ANSWER:
            return "no answer within 5 s"
        if response.status == CLOSED:
            # A request sent whole deserves an answer; a declared length shorter than the body is two requests,
            # and the first is answered before the rest is read.
            return "the connection closed without an answer"
        if response.status not in ALLOWED:
            return f"status {response.status} (allowed: {sorted(ALLOWED)})"
        if response.status == 200 and case.checks_prediction:
            try:
                answer = json.loads(response.body)
            except ValueError:
                return "a 200 whose body is not JSON"
            prediction = answer.get("prediction") if isinstance(answer, dict) else None
            if not isinstance(prediction, int | float) or not math.isfinite(prediction) or not 0 <= prediction <= 1:
                return f"a 200 with prediction {prediction!r}"
            if answer.get("image"):
                return "a 200 that sends the image back"
        return None

    def healthy(self) -> bool:
        """A plain validator request is still answered 200."""
        from sn72_lab.hostile import payloads

        request = HostileRequest(signer=self.signers[0], image=payloads.b64(payloads.jpeg(9, (32, 32))))
        return self.send(request).status == 200

    def close(self) -> None:
        self.server.stop(2.0)
        self.engine.close()
        self.loop.close()


async def status_only(target: Target, data: bytes, timeout_s: float) -> Response:
    """The status line and headers of the answer (no body), CLOSED if the server hangs up first."""
    started_s = time.monotonic()
    try:
        reader, writer = await connect(target)
    except OSError:
        return Response(CLOSED)

    async def head() -> Response:
        parts = (await reader.readline()).split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return Response(CLOSED)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return Response(int(parts[1]), headers=headers)

    try:
        writer.write(data)
        await writer.drain()
        response = await asyncio.wait_for(head(), timeout_s)
    except TimeoutError:
        response = Response(NO_ANSWER)
    except ConnectionError:
        response = Response(CLOSED)
    finally:
        writer.close()
    response.elapsed_s = time.monotonic() - started_s
    return response


def describe(request: HostileRequest) -> str:
    """The request's odd parts, short enough for a failure message."""
    parts = {name: getattr(request, name) for name in ("route", "method", "fields", "timeout_header", "headers",
                                                        "nonce_ns", "axon_hotkey", "chunked", "content_length")}
    parts["signed"] = request.signer is not None
    parts["claim_hotkey"] = request.claim_hotkey
    parts["image"] = (request.image[:60] + "...") if len(request.image) > 60 else request.image
    parts["body"] = None if request.body is None else request.body[:60]
    return ", ".join(f"{name}={value!r}" for name, value in parts.items() if value not in (None, {}, ""))


def check_all(target: FuzzTarget, inputs: Sequence[bytes]) -> None:
    for data in inputs:
        target.check(data)
