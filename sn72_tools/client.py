"""Talking to a miner the way validators do: a real bittensor dendrite, `ImageSynapse`, a timeout.

Shared by sn72-query, sn72-bench and the end-to-end tests. Also the scoring
arithmetic validators apply (np.round binarisation, MCC, accuracy), latency percentiles, and the pacing and
429 retries a client needs to stay under the miner's per-hotkey rate limit.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from neurons.protocol import ImageSynapse

# Re-exported for the scripts: one copy of the validators' arithmetic, in sn72_tools/evaluation/scoring.py.
from sn72_tools.evaluation.scoring import accuracy, mcc  # noqa: F401


def make_dendrite(wallet: Any, external_ip: str | None = "127.0.0.1") -> Any:
    """A dendrite that does not look its ip up on the internet when `external_ip` is given (docs/protocol.md)."""
    import bittensor as bt
    from bittensor.utils import networking

    if external_ip is None:
        return bt.Dendrite(wallet=wallet)
    original = networking.get_external_ip
    networking.get_external_ip = lambda: external_ip  # consulted once, by the constructor
    try:
        return bt.Dendrite(wallet=wallet)
    finally:
        networking.get_external_ip = original


def axon_info(ip: str, port: int, hotkey: str) -> Any:
    import bittensor as bt

    return bt.AxonInfo(version=0, ip=ip, port=port, ip_type=4, hotkey=hotkey, coldkey="")


def encode_jpeg(image: Image.Image | np.ndarray, quality: int = 75) -> str:
    """base64 JPEG, as validators send (PIL's default quality)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return base64.b64encode(buffer.getvalue()).decode()


def synthetic_image(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth random picture (compresses like a photo, unlike white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class Outcome:
    prediction: float
    status_code: int
    message: str
    latency_s: float

    @property
    def ok(self) -> bool:
        return self.status_code == 200 and 0.0 <= self.prediction <= 1.0


async def query(
    dendrite: Any,
    axon: Any,
    image_b64: str,
    timeout_s: float = 9.0,
    synapse_cls: type[ImageSynapse] = ImageSynapse,
    testnet_label: int = -1,
) -> Outcome:
    """One validator-style request; never raises for a miner-side failure."""
    started = time.monotonic()
    responses = await dendrite.forward(
        axons=[axon],
        synapse=synapse_cls(image=image_b64, testnet_label=testnet_label),
        deserialize=False,
        timeout=timeout_s,
    )
    elapsed = time.monotonic() - started
    response = responses[0]
    status = int(response.dendrite.status_code or 0) if response.dendrite is not None else 0
    message = str(response.dendrite.status_message or "") if response.dendrite is not None else ""
    prediction = float(response.prediction) if response.prediction is not None else -1.0
    return Outcome(prediction, status, message, elapsed)


RATE_LIMITED = 429  # what the miner answers a hotkey over its guards.rate_per_s / burst (neurons/miner.py)


class Pacer:
    """Request start times at most `rate_per_s` a second over every task that shares it (0: unpaced).

    The miner refuses a hotkey over its rate (`guards.rate_per_s`, 5/s by default, after a `burst` of 40) with
    429; a fast model answers far faster than that, so an unpaced client ends up measuring the guard, not the model.
    """

    def __init__(self, rate_per_s: float) -> None:
        self.interval_s = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._next_s = float("-inf")

    async def wait(self) -> None:
        if not self.interval_s:
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self._next_s)  # read and reserved with no await between: one slot per caller
        self._next_s = start + self.interval_s
        if start > now:
            await asyncio.sleep(start - now)


async def query_paced(
    dendrite: Any, axon: Any, image_b64: str, timeout_s: float, pacer: Pacer, retries: int = 3,
    backoff_s: float = 0.5,
) -> tuple[Outcome, int]:
    """One request started through `pacer`; a 429 is retried up to `retries` times, after `backoff_s`, then twice
    that, and so on (each retry paced too). Returns the last outcome and how many 429 answers were retried."""
    retried = 0
    while True:
        await pacer.wait()
        outcome = await query(dendrite, axon, image_b64, timeout_s)
        if outcome.status_code != RATE_LIMITED or retried >= retries:
            return outcome, retried
        await asyncio.sleep(backoff_s * 2**retried)
        retried += 1


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 90, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{int(p)}": float("nan") for p in points}
    array = np.asarray(values, dtype=float)
    return {f"p{int(p)}": float(np.percentile(array, p)) for p in points}
