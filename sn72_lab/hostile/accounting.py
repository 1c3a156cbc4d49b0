"""Does the miner count what happened to it? (second red-team pass, defect 8: each 200 was reported twice, a client
that went away never). Read from the outside through the miner's Prometheus endpoint
(`sn72_miner_axon_total{outcome}`).

Signed requests whose client hangs up as soon as the request is sent must each show up once as
`closed_client_gone`; answered requests must not add late counts. (The doubled 200 showed in the late counts and
latency samples, which an outsider sees only for late answers: the HTTP layer's own tests count reports directly.)
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid

from sn72_lab.hostile import payloads
from sn72_lab.hostile.model import Context, Observation, Reply
from sn72_lab.hostile.wire import HostileRequest, build, connect, send

METRIC = "sn72_miner_axon"
GONE, ANSWERED = 5, 5


def outcome_counts(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()  # the operator's own endpoint
    for family in text_string_to_metric_families(text):
        if family.name == METRIC:
            return {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")}
    return {}


async def hang_up_after_sending(context: Context, seed: int) -> None:
    """A signed request (a large image: seconds of work are not needed, tens of ms are) and the connection closed
    at once, before any answer."""
    image = payloads.b64(payloads.jpeg(seed, (1600, 1200)))
    head, body = build(HostileRequest(signer=context.attacker, image=image, uuid=str(uuid.uuid4())), context.target)
    _, writer = await connect(context.target)
    writer.write(head + body)
    await writer.drain()
    writer.close()


async def reported_once(context: Context) -> Observation:
    if context.metrics_url is None:
        return Observation([Reply("skipped", "no --metrics URL given")])
    before = await asyncio.to_thread(outcome_counts, context.metrics_url)
    for seed in range(GONE):
        await hang_up_after_sending(context, 40 + seed)
    replies = []
    for seed in range(ANSWERED):
        request = HostileRequest(signer=context.attacker, image=payloads.b64(payloads.jpeg(50 + seed)),
                                 uuid=str(uuid.uuid4()))
        replies.append(Reply.of(await send(request, context.target)))
    await asyncio.sleep(1.5)  # the gone requests finish on the miner's side and are reported
    after = await asyncio.to_thread(outcome_counts, context.metrics_url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    problems = []
    if delta("closed_client_gone") != GONE:
        problems.append(f"closed_client_gone grew {delta('closed_client_gone'):.0f} for {GONE} clients that left")
    late = delta("late_answer") + delta("late_other")
    if late:
        problems.append(f"late counts grew {late:.0f} for answers in time")
    return Observation(replies, problems)
