"""Request and result types, the status of an answer, and deadline arithmetic.

Time is `time.monotonic()` seconds throughout; durations carry a unit suffix.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from cascade.decode import DeviceJpeg

_ids = itertools.count(1)


class Status(enum.StrEnum):
    """How an answer was reached."""

    CONFIDENT = "confident"  # a level's pooled answer was confident enough to exit
    EXHAUSTED = "exhausted"  # every level ran; the last pooled answer is returned
    DEADLINE = "deadline"  # time ran out (or the next level would not fit) after at least one answer
    PRIOR = "prior"  # nothing answered in time: the configured prior
    CACHED = "cached"  # the same image was answered recently
    COALESCED = "coalesced"  # the same image was being answered for another caller: its answer, shared


@dataclass(frozen=True)
class Job:
    """What the miner hands the engine: the undecoded payload and who asked."""

    payload: str  # base64 image, as on the wire
    hotkey: str = ""
    stake: float = 0.0
    arrival_s: float = field(default_factory=time.monotonic)
    deadline_s: float = 0.0  # absolute monotonic time by which the answer must be handed back
    testnet_label: int = -1
    request_id: int = field(default_factory=lambda: next(_ids))


@dataclass
class Request:
    """A decoded job travelling through the cascade."""

    job: Job
    image: np.ndarray | None  # HxWx3 uint8 RGB; None until a level needs host pixels (`jpeg` is set then)
    image_hash: str
    image_bytes: bytes  # the encoded image as received (kept for active learning)
    jpeg: DeviceJpeg | None = None  # checked and left encoded: experts that decode JPEGs on their device take it

    @property
    def request_id(self) -> int:
        return self.job.request_id

    @property
    def deadline_s(self) -> float:
        return self.job.deadline_s

    def time_left_s(self, now_s: float | None = None) -> float:
        return self.job.deadline_s - (time.monotonic() if now_s is None else now_s)


@dataclass(frozen=True)
class ExpertAnswer:
    """One expert's raw probability for one image, and its calibrated log-odds."""

    expert: str
    level: int
    probability: float
    logit: float  # calibrated
    weight: float


@dataclass(frozen=True)
class Result:
    """The engine's answer: always a probability in [0, 1]."""

    request_id: int
    probability: float
    status: Status
    levels_run: int
    answers: tuple[ExpertAnswer, ...] = ()
    latency_ms: float = 0.0
    failures: tuple[str, ...] = ()  # experts that failed or expired for this request

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0 or self.probability != self.probability:
            raise ValueError(f"probability must lie in [0, 1], got {self.probability}")
