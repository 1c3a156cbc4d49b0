"""The honest validator beside the progressive-JPEG attack (defect 1 of the second red-team pass,
docs/decoding.md): before/after figures.

A registered validator (the attacker) sends ~160 KB progressive JPEGs of 6000x6000 with 2,000 empty scans each
(sn72_lab/hostile_jpeg.py), each distinct, below its own rate limit (1.5/s against the production 2/s), while
the honest validator sends one small JPEG at 1.8/s on average (jittered, open loop, signed, real dendrite, 9 s
timeout). The miner is the offline target of the security suite (tiny ViT + tiny YOLO on the CPU, production
guards, the suite's decode limits), started fresh for each run. Per run: the honest requests answered in time with
a model answer (not the prior, which this cascade sends as 0.5), their p50/p99, and what the attacker got.

    .venv/bin/python scripts/decode_cost_attack.py --runs 3 --seconds 30 --json out.json

Run it against other code by putting that tree first on PYTHONPATH (the miner process inherits it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sn72_lab.hostile.payloads import b64
from sn72_lab.hostile.target import cascade, miner_overrides, write_cast
from sn72_lab.hostile_jpeg import many_scans_jpeg
from sn72_lab.offline import run_miner
from sn72_tools.client import axon_info, encode_jpeg, make_dendrite, percentiles, query, synthetic_image

PRIOR = 0.5
TIMEOUT_S = 9.0


async def paced(rate_per_s: float, seconds: float, send: Any) -> list[Any]:
    """`send(i)` started every 1/rate s on average (0.5-1.5x jitter) for `seconds`; every outcome once done."""
    tasks, i, until = [], 0, time.monotonic() + seconds
    while time.monotonic() < until:
        tasks.append(asyncio.ensure_future(send(i)))
        i += 1
        await asyncio.sleep(random.uniform(0.5, 1.5) / rate_per_s)
    return list(await asyncio.gather(*tasks))


async def measure(miner: Any, cast: Any, args: argparse.Namespace) -> dict[str, Any]:
    axon = axon_info("127.0.0.1", miner.port, miner.hotkey)
    honest, attacker = make_dendrite(cast.validator), make_dendrite(cast.attacker)
    seed = random.randrange(1 << 30)
    attacks = [b64(many_scans_jpeg(args.size, args.size, args.scans + i))
               for i in range(int(args.seconds * args.attack_rate * 1.6) + 4)]
    try:
        for i in range(3):  # warm-up, not counted
            await query(honest, axon, encode_jpeg(synthetic_image(seed + 100_000 + i)), TIMEOUT_S)
        started = time.monotonic()

        async def validator(i: int) -> Any:
            return await query(honest, axon, encode_jpeg(synthetic_image(seed + i)), TIMEOUT_S)

        async def attack(i: int) -> Any:
            return await query(attacker, axon, attacks[i], TIMEOUT_S)

        validator_outcomes, attack_outcomes = await asyncio.gather(
            paced(args.validator_rate, args.seconds, validator),
            paced(args.attack_rate, args.seconds, attack) if args.attack_rate > 0 else asyncio.sleep(0, []))
        wall_s = time.monotonic() - started
    finally:
        await honest.aclose_session()
        await attacker.aclose_session()
    good = [o for o in validator_outcomes if o.ok and o.latency_s <= TIMEOUT_S and o.prediction != PRIOR]
    latencies_ms = [o.latency_s * 1000 for o in validator_outcomes if o.ok]
    points = percentiles(latencies_ms, (50, 99))
    return {
        "honest_sent": len(validator_outcomes), "honest_model_answers": len(good),
        "honest_prior_answers": sum(1 for o in validator_outcomes if o.ok and o.prediction == PRIOR),
        "honest_share": len(good) / max(1, len(validator_outcomes)),
        "honest_p50_ms": points["p50"], "honest_p99_ms": points["p99"],
        "attack_sent": len(attack_outcomes),
        "attack_statuses": dict(Counter(o.status_code for o in attack_outcomes)),
        "attack_p50_ms": percentiles([o.latency_s * 1000 for o in attack_outcomes], (50,))["p50"],
        "wall_s": wall_s,
    }


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="decode-cost-") as tmp:
        folder = Path(tmp)
        cast = write_cast(folder)
        tiny = cascade(folder / "models")
        with run_miner(folder, folder / "wallets", cast.miner, tiny, extra=miner_overrides()) as miner:
            return asyncio.run(measure(miner, cast, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="attack window per run")
    parser.add_argument("--validator-rate", type=float, default=1.8)
    parser.add_argument("--attack-rate", type=float, default=1.5, help="0: the validator alone")
    parser.add_argument("--size", type=int, default=6000, help="declared side of the attack JPEG")
    parser.add_argument("--scans", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        figures = one_run(args)
        runs.append(figures)
        print(f"run {run + 1}: honest {figures['honest_model_answers']}/{figures['honest_sent']} model answers in "
              f"time (prior {figures['honest_prior_answers']}), p50 {figures['honest_p50_ms']:.0f} ms, p99 "
              f"{figures['honest_p99_ms']:.0f} ms; attack {figures['attack_sent']} sent "
              f"{figures['attack_statuses']}, p50 {figures['attack_p50_ms']:.0f} ms", flush=True)
    shares = [r["honest_share"] for r in runs]
    print(f"honest share answered by the model in time: mean {statistics.mean(shares):.3f}, "
          f"range {min(shares):.3f}-{max(shares):.3f} over {len(runs)} runs")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
