"""Run a labelled set through the real engine in eval mode and keep every expert's raw output on disk.

Eval mode is `cascade.engine.Engine` with the cascade's real experts (`cascade.experts.registry`),
the result cache off, a far deadline and `run_every_level=True`: every level runs on every image.
Each expert's raw probability is cached in SQLite under (image sha256, expert, model identity), so
a second run over the same images, a refit or another distortion's baseline costs no inference;
the engine (and its models) is only started when some image is missing from the cache.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import sqlite3
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from tqdm import tqdm

from cascade.config import CascadeConfig, DecodeConfig, EngineConfig, ExpertConfig, SchedulerConfig
from cascade.decode import DecodeError
from cascade.engine import Engine
from cascade.model_identity import content_identity
from cascade.process_settings import start_with_process_settings
from cascade.request import Job, Result, Status
from sn72_tools.evaluation import distort
from sn72_tools.evaluation.datasets import EvalError, Source

FAR_DEADLINE_S = 86_400.0  # eval mode: no request ever runs out of time
HOTKEY = "sn72-eval"


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass
class Recording:
    """Raw outputs of every expert on every image that could be run, in the set's order."""

    experts: list[str]
    names: list[str]
    labels: np.ndarray  # (n,) 0/1
    outputs: np.ndarray  # (n, experts) raw P(roadwork)
    skipped: list[Skipped]
    inferred: int  # images run through the engine this time
    cached: int  # images whose outputs were all in the cache
    seconds: float  # wall time of the whole recording
    startup_s: float  # of which loading and warming the experts (0: no model was needed)
    expert_seconds: dict[str, float]  # per image, measured in batches (missing: never measured)
    sample: list[bytes] = field(default_factory=list)  # payloads for the latency sample
    hashes: list[str] = field(default_factory=list)  # sha256 of each image's stored bytes (before any distortion)

    def subset(self, rows: np.ndarray) -> Recording:
        return dataclasses.replace(self, names=[self.names[i] for i in rows], labels=self.labels[rows],
                                   outputs=self.outputs[rows], hashes=[self.hashes[i] for i in rows])


def model_identity(expert: ExpertConfig) -> str:
    """What makes an expert's output what it is: backend, weights, preprocessing (input size, resize mode),
    numeric type.

    The weights are named by content (cascade/model_identity.py, as a calibration names them): a local model
    rebuilt or retrained in place is a new identity even when its files keep their names, sizes and times; a hub id
    by the snapshot revision in the local cache when there is one.
    """
    import torch

    identity = {
        "backend": expert.backend, "weights": content_identity(expert.model), "dtype": expert.dtype,
        "input_size": expert.input_size, "resize": expert.resize, "options": expert.options, "device": expert.device,
        "cuda": torch.cuda.is_available(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class OutputCache:
    """Raw outputs and measured costs in one SQLite file."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "outputs.sqlite"
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.executescript(
                # NOTE: a cache: a power cut may lose the last outputs written, which the next run recomputes.
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                "CREATE TABLE IF NOT EXISTS outputs (image_sha256 TEXT NOT NULL, expert TEXT NOT NULL,"
                " model TEXT NOT NULL, probability REAL NOT NULL, PRIMARY KEY (image_sha256, expert, model));"
                "CREATE TABLE IF NOT EXISTS costs (expert TEXT NOT NULL, model TEXT NOT NULL,"
                " seconds_per_image REAL NOT NULL, images INTEGER NOT NULL, PRIMARY KEY (expert, model));"
                "CREATE TABLE IF NOT EXISTS refusals (image_sha256 TEXT NOT NULL, limits TEXT NOT NULL,"
                " reason TEXT NOT NULL, PRIMARY KEY (image_sha256, limits));"
            )
        except sqlite3.Error as exc:
            raise EvalError(f"output cache {self.path}: {exc}") from exc

    def get(self, image_sha256: str, identities: dict[str, str]) -> dict[str, float] | None:
        """Every expert's output for the image, or None if any is missing."""
        found = {}
        for expert, model in identities.items():
            row = self.db.execute("SELECT probability FROM outputs WHERE image_sha256 = ? AND expert = ? AND model = ?",
                                  (image_sha256, expert, model)).fetchone()
            if row is None:
                return None
            found[expert] = float(row[0])
        return found

    def put(self, image_sha256: str, identities: dict[str, str], outputs: dict[str, float]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?)",
                            [(image_sha256, e, identities[e], p) for e, p in outputs.items()])

    def refusal(self, image_sha256: str, limits: str) -> str | None:
        """Why the engine refused these bytes under these decode limits, if it did before."""
        row = self.db.execute("SELECT reason FROM refusals WHERE image_sha256 = ? AND limits = ?",
                              (image_sha256, limits)).fetchone()
        return None if row is None else str(row[0])

    def put_refusal(self, image_sha256: str, limits: str, reason: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO refusals VALUES (?, ?, ?)", (image_sha256, limits, reason))

    def put_cost(self, expert: str, model: str, seconds_per_image: float, images: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO costs VALUES (?, ?, ?, ?)", (expert, model, seconds_per_image, images))

    def cost(self, expert: str, model: str) -> float | None:
        row = self.db.execute("SELECT seconds_per_image FROM costs WHERE expert = ? AND model = ?",
                              (expert, model)).fetchone()
        return None if row is None else float(row[0])

    def close(self) -> None:
        self.db.close()


class EvalEngine:
    """The real engine with the cascade's real experts, started on first use."""

    def __init__(self, cascade: CascadeConfig, decode: DecodeConfig | None = None) -> None:
        self.config = EngineConfig(cascade=cascade, scheduler=SchedulerConfig(cache_size=0),
                                   decode=decode or DecodeConfig())
        self._engine: Engine | None = None
        self.fatal: str | None = None
        self.startup_s = 0.0

    @property
    def started(self) -> bool:
        return self._engine is not None

    def get(self) -> Engine:
        if self._engine is None:
            logger.info("loading the cascade's experts for eval mode")
            began = time.monotonic()
            engine = Engine(self.config, run_every_level=True, on_fatal=self._on_fatal)
            start_with_process_settings(engine)  # as the miner starts it: its latencies are measured here
            self._engine = engine
            self.startup_s = time.monotonic() - began
        return self._engine

    def _on_fatal(self, replica: str, exc: BaseException) -> None:
        self.fatal = f"device context of {replica} is lost ({exc!r})"

    def submit(self, payload: bytes, deadline_s: float) -> Future[Result]:
        now = time.monotonic()
        job = Job(payload=base64.b64encode(payload).decode(), hotkey=HOTKEY, arrival_s=now, deadline_s=now + deadline_s)
        return self.get().submit(job)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def measured_costs(engine: Engine, experts: list[str]) -> dict[str, float]:
    """Expert-seconds per image from the engine's batch timings (all replicas together)."""
    costs = {}
    for name in experts:
        keys = [key for key in engine.stats.batch_seconds if key.rsplit("@", 1)[0] == name]
        images = sum(engine.stats.batch_sizes[key].total for key in keys)
        if images:
            costs[name] = sum(engine.stats.batch_seconds[key].total for key in keys) / images
    return costs


def record(
    source: Source,
    cascade: CascadeConfig,
    engine: EvalEngine,
    cache: OutputCache,
    *,
    distortion: str = "native",
    seed: int = 0,
    sample_size: int = 0,
    progress: bool = True,
) -> Recording:
    """Every expert's raw output on every readable image of `source` (cache first, engine for the rest)."""
    experts = [e.name for e in cascade.experts()]
    identities = {e.name: model_identity(e) for e in cascade.experts()}
    limits = hashlib.sha256(engine.config.decode.model_dump_json().encode()).hexdigest()[:16]
    sched = engine.config.scheduler
    room = sched.max_in_flight or sched.max_in_flight_per_replica  # the engine starts on first use: one replica's
    window = min(room, 4 * max(e.max_batch for e in cascade.experts()))
    rng = np.random.default_rng(seed)
    sample_positions = set(rng.choice(source.size, min(sample_size, source.size), replace=False).tolist())
    rows: dict[int, tuple[str, int, list[float]]] = {}
    originals: dict[int, str] = {}  # position -> sha256 of the stored bytes (the data roles' name of the image)
    skipped: list[Skipped] = []
    sample: list[bytes] = []
    pending: deque[tuple[int, str, int, str, Future[Result]]] = deque()
    inferred = cached = 0
    started = time.monotonic()

    def collect() -> None:
        nonlocal inferred
        position, name, label, sha, future = pending.popleft()
        try:
            result = future.result()
        except DecodeError as exc:  # remembered: a rerun need not load the models to refuse it again
            cache.put_refusal(sha, limits, str(exc))
            skipped.append(Skipped(name, str(exc)))
            return
        outputs = {answer.expert: answer.probability for answer in result.answers}
        if engine.fatal is not None:
            raise EvalError(engine.fatal)
        if result.status == Status.PRIOR or set(outputs) != set(experts):
            skipped.append(Skipped(name, f"not every expert answered ({', '.join(result.failures) or result.status})"))
            return
        cache.put(sha, identities, outputs)
        rows[position] = (name, label, [outputs[e] for e in experts])
        inferred += 1

    with tqdm(total=source.size, desc="recording", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for position, item in enumerate(source.items()):
            bar.update(1)
            try:
                stored = item.read()
                data = distort.apply(distortion, stored, seed)
            except (OSError, ValueError) as exc:
                skipped.append(Skipped(item.name, f"cannot read: {exc}"))
                continue
            if position in sample_positions:
                sample.append(data)
            sha = hashlib.sha256(data).hexdigest()
            originals[position] = sha if data is stored else hashlib.sha256(stored).hexdigest()
            refused = cache.refusal(sha, limits)
            if refused is not None:
                skipped.append(Skipped(item.name, refused))
                continue
            known = cache.get(sha, identities)
            if known is not None:
                rows[position] = (item.name, item.label, [known[e] for e in experts])
                cached += 1
                continue
            pending.append((position, item.name, item.label, sha, engine.submit(data, FAR_DEADLINE_S)))
            while len(pending) >= window:
                collect()
        while pending:
            collect()
    costs = measured_costs(engine.get(), experts) if engine.started else {}
    for name, seconds in costs.items():
        cache.put_cost(name, identities[name], seconds, inferred)
    for name in experts:
        if name not in costs and (known_cost := cache.cost(name, identities[name])) is not None:
            costs[name] = known_cost
    ordered = [rows[k] for k in sorted(rows)]
    return Recording(
        experts=experts,
        names=[r[0] for r in ordered],
        labels=np.array([r[1] for r in ordered], dtype=int),
        outputs=np.array([r[2] for r in ordered], dtype=float).reshape(len(ordered), len(experts)),
        skipped=skipped,
        inferred=inferred,
        cached=cached,
        seconds=time.monotonic() - started,
        startup_s=engine.startup_s,
        expert_seconds=costs,
        sample=sample,
        hashes=[originals[k] for k in sorted(rows)],
    )


def measure_latency(engine: EvalEngine, payloads: list[bytes], deadline_s: float, level_names: list[str],
                    progress: bool = True) -> dict[str, Any]:
    """Latency through the normal path (exits and latency skips on, cache off), one request at a time."""
    live = engine.get()
    live.run_every_level = False
    latencies_ms: list[float] = []
    exits: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    late = 0
    try:
        for data in tqdm(payloads, desc="latency", unit="req", disable=not progress, dynamic_ncols=True):
            began = time.monotonic()
            try:
                result = engine.submit(data, deadline_s).result()
            except DecodeError:
                continue
            done = time.monotonic()
            latencies_ms.append((done - began) * 1000.0)
            late += done > began + deadline_s
            statuses[result.status.value] += 1
            exits["prior" if result.status == Status.PRIOR or not result.levels_run else
                  level_names[result.levels_run - 1]] += 1
    finally:
        live.run_every_level = True
    n = len(latencies_ms)
    return {
        "sample": n,
        "deadline_s": deadline_s,
        "mean_ms": float(np.mean(latencies_ms)) if n else None,
        "p99_ms": float(np.percentile(latencies_ms, 99)) if n else None,
        "exit_levels": {name: exits.get(name, 0) for name in [*level_names, "prior"]},
        "statuses": dict(statuses),
        "late": late,
        "late_rate": late / n if n else 0.0,
        "prior_rate": statuses.get(Status.PRIOR.value, 0) / n if n else 0.0,
    }
