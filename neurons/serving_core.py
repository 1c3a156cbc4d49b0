"""What the axon's handlers ask of the miner process, in one place: nonce claims with the rate limit, jobs for the
engine, and the report of each response.

The HTTP side (parsing, the guards' cheap checks, the signature, the body) may run in front processes
(neurons/fronts.py); what must hold for all of them at once lives here, in the one miner process beside the
scheduler: a nonce is claimed once whichever front saw it, a caller's token bucket is one bucket, the response lag
that sets the engine's deadlines learns from every response, and the counters are the miner's own. Without fronts
the handlers call this directly (`admit` and `answer` are then steps of the axon's own event loop).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from typing import Any, NamedTuple

from loguru import logger

from cascade.answer import shaped
from cascade.decode import DecodeError
from cascade.request import Job, Result
from neurons.config import MinerConfig
from neurons.deadlines import ResponseLag
from neurons.guards import TokenBucketLimiter
from neurons.http_guard import CLIENT_GONE, RequestState
from neurons.nonces import NonceRecord
from neurons.outcomes import AxonOutcomes

ANSWER_GRACE_S = 0.05  # the engine answers by its deadline; this is only the last guard's slack


class Reply(NamedTuple):
    """The answer for the caller: 200 with a prediction, or a refusal (status and message); `outcome` is its counter,
    added once the answer is on its way (`ServingCore.answer`; with fronts, once a live front has it)."""

    prediction: float
    status: int = 200
    message: str = ""
    outcome: str = ""


class ServingCore:
    """The miner process's side of every request. `admit` and `submit` are safe from any thread."""

    def __init__(self, config: MinerConfig, engine: Any, outcomes: AxonOutcomes, started_ns: int) -> None:
        self.config = config
        self.engine = engine
        self.outcomes = outcomes
        limits = config.axon
        self.nonces = NonceRecord(limits.nonce_max_age_s, limits.nonce_future_s, limits.nonce_record_size,
                                  not_before_ns=started_ns)
        self.limiter = TokenBucketLimiter(config.guards.rate_per_s, config.guards.burst)
        # The engine's deadline keeps back what answers currently take to leave (at least margin_s).
        self.response_lag = ResponseLag(config.deadline.margin_s, config.deadline.timeout_cap_s / 2)
        self._lock = threading.Lock()  # fronts' link threads and the axon's loop claim at once
        self._report_lock = threading.Lock()  # and report at once (the response lag's window is not thread-safe)

    @property
    def prior(self) -> float:
        return float(self.engine.config.cascade.prior)

    # -- claims ---------------------------------------------------------------------------------
    def claim(self, signer: str, uuid: str | None, nonce: int, hotkey: str) -> tuple[str | None, bool]:
        """A verified request's nonce, claimed once: (why refused, or None; whether over the caller's rate limit)."""
        with self._lock:
            refusal = self.nonces.claim(signer, uuid, nonce)
            if refusal is not None:
                return refusal, False
            return None, not self.limiter.allow(hotkey)

    async def admit(self, signer: str, uuid: str | None, nonce: int, hotkey: str) -> tuple[str | None, bool]:
        return self.claim(signer, uuid, nonce, hotkey)

    # -- jobs -----------------------------------------------------------------------------------
    def job(self, payload: str, hotkey: str, stake: float, arrival_s: float, client_deadline_s: float,
            testnet_label: int) -> Job:
        return Job(payload=payload, hotkey=hotkey, stake=stake, arrival_s=arrival_s,
                   deadline_s=client_deadline_s - self.response_lag.reserve_s(), testnet_label=testnet_label)

    def submit(self, job: Job) -> Future[Result]:
        # The engine owns the job's lifetime and answers by its deadline on its own: never cancel it.
        return self.engine.submit(job)  # type: ignore[no-any-return]

    def reply(self, job: Job, done: Future[Result]) -> Reply:
        """The caller's answer from the engine's (done) future (not counted yet: `Reply.outcome`)."""
        try:
            result = done.result()
        except DecodeError as exc:
            return Reply(-1.0, 400, str(exc), "refused_bad_image")
        except Exception as exc:  # noqa: BLE001 - a per-request engine failure becomes an answer (prior)
            logger.opt(exception=exc).error("engine failed request {}: {!r}; answering from the prior",
                                            job.request_id, exc)
            return Reply(self.prior, outcome="answered_engine_error")
        # The calibrated probability stays the engine's (exits, metrics, active learning); the caller gets the
        # answer shaped to how validators score it (cascade/answer.py).
        prediction = float(shaped(result, self.engine.config.cascade.answer))
        return Reply(prediction, outcome=f"answered_{result.status.value}")

    async def answer(self, payload: str, hotkey: str, stake: float, arrival_s: float, client_deadline_s: float,
                     testnet_label: int) -> Reply | None:
        """The engine's answer, or None if it has none by the job's deadline (the caller then answers the prior)."""
        job = self.job(payload, hotkey, stake, arrival_s, client_deadline_s, testnet_label)
        future = self.submit(job)
        waited = asyncio.wrap_future(future)
        done, _ = await asyncio.wait({waited}, timeout=max(0.0, job.deadline_s - time.monotonic()) + ANSWER_GRACE_S)
        if not done:
            logger.error("engine did not answer request {} by its deadline; answering from the prior", job.request_id)
            return None
        reply = self.reply(job, future)
        self.outcomes.add(reply.outcome)
        return reply

    # -- reports --------------------------------------------------------------------------------
    def on_response(self, state: RequestState) -> None:
        """Every request once, when it is over (the HTTP guard reports each exactly once, 499 if its client left
        first): late ones (past the caller's deadline) are counted here."""
        with self._report_lock:
            self._report(state)

    def _report(self, state: RequestState) -> None:
        if state.violation is not None:
            self.outcomes.add(state.violation[2])
            if state.violation[2] == "late_skipped":
                return  # counted as late already: the caller had given up before its turn came
        elif state.status == CLIENT_GONE:
            self.outcomes.add("closed_client_gone")
        elif state.status >= 500:
            self.outcomes.add(f"error_{state.status}")
        elif state.status == 400 and not state.outcome:
            # Headers bittensor cannot parse, or a body that is not the synapse: refused by the axon's own steps,
            # which count nothing themselves (the engine's own 400s carry their outcome).
            self.outcomes.add("refused_malformed")
        deadline_s = state.client_deadline_s or state.arrival_s + self.config.deadline.timeout_cap_s
        if state.status == 200:
            self.outcomes.observe_latency(state.finished_s - state.arrival_s)
        if state.answered_s:
            self.response_lag.record(state.finished_s - state.answered_s)
        if state.finished_s > deadline_s:
            self.outcomes.add("late_answer" if state.status == 200 else "late_other")
