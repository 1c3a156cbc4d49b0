"""What an attack is, what it saw, and who takes part: shared by the catalogue, the red-team runner and the tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sn72_lab.hostile.wire import Response, Target


@dataclass
class Context:
    """The miner under attack and the identities the attacks use."""

    target: Target
    validator_hotkey: str  # the honest validator: spoofed by some attacks, never signs one
    attacker: Any  # keypair of a registered validator that misbehaves: signs the malformed requests
    stranger: Any  # keypair that is not on the subnet
    non_validator: Any | None = None  # keypair registered without a validator permit (skipped when None)
    attacker_ip: str = "127.0.0.2"  # connection-heavy attacks come from another address than the validator's
    slow_give_up_s: float = 15.0  # slow clients stop here: a miner that has not hung up by then has no timeout
    max_connections_per_ip: int | None = None  # known cap: more than this many idle connections must close at once
    idle_connections: int = 1100
    flood_s: float = 20.0
    flood_rate_per_s: float = 5.0
    burst: float = 20.0  # the miner's per-hotkey burst (guards.burst)
    full: bool = False  # full-size attacks (the second red-team pass's sizes, durations); small ones for the test suite
    metrics_url: str | None = None  # the miner's Prometheus endpoint: accounting attacks are skipped without it


@dataclass
class Reply:
    status: int | str
    message: str = ""
    prediction: float | None = None
    image: str | None = None
    elapsed_s: float = 0.0

    @classmethod
    def of(cls, response: Response) -> Reply:
        prediction = image = None
        if response.status == 200:
            try:
                data = response.json()
            except ValueError:
                data = None
            if isinstance(data, dict):
                prediction, image = data.get("prediction"), data.get("image")
        return cls(response.status, response.message, prediction, image, response.elapsed_s)


@dataclass
class Observation:
    replies: list[Reply]
    problems: list[str] = field(default_factory=list)  # what went wrong beyond the status codes

    def statuses(self) -> str:
        counts = Counter(str(r.status) for r in self.replies)
        return " ".join(f"{status}x{n}" if n > 1 else status for status, n in sorted(counts.items()))


Check = Callable[[Context, list[Reply]], list[str]]


@dataclass(frozen=True)
class Attack:
    name: str
    expected: frozenset[int | str]  # every reply's status must be one of these
    how: str
    run: Callable[[Context], Awaitable[Observation]]
    heavy: bool = False  # loads the miner for seconds: the honest validator's answers during it matter
    check: Check | None = None  # message, prediction, timing or count conditions

    @property
    def expected_text(self) -> str:
        return "/".join(sorted(str(s) for s in self.expected))

    async def observe(self, context: Context) -> Observation:
        observation = await self.run(context)
        unexpected = sorted({str(r.status) for r in observation.replies if r.status not in self.expected})
        if unexpected:
            observation.problems.insert(0, f"unexpected status {', '.join(unexpected)}")
        if not observation.replies:
            observation.problems.append("no reply observed")
        if self.check is not None:
            observation.problems += self.check(context, observation.replies)
        return observation
