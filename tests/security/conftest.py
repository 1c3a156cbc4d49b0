"""One real miner process for the security suite, attacked on loopback (the first red-team pass, docs/security.md).

The miner runs the tiny ViT + tiny YOLO cascade (ultralytics imported, as in production) with the production
guard limits (2/s, burst 20) and small HTTP-layer limits. It is started as an operator would start it, not as the
test suite: without the offline switches in its environment (the miner must set them itself), with the default
soft limit of 1024 open files (it must raise its own), and with a network probe on its path that prints any
attempt to reach beyond loopback.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from sn72_lab.hostile.catalogue import by_name
from sn72_lab.hostile.load import LoadStats, ValidatorLoad
from sn72_lab.hostile.model import Context, Observation
from sn72_lab.hostile.target import Cast, cascade, keypair, miner_overrides, write_cast
from sn72_lab.hostile.wire import Target
from sn72_lab.offline import MinerProcess, run_miner
from sn72_tools.client import encode_jpeg, synthetic_image
from tests.factories.dendrites import signed_query
from tests.factories.metrics import axon_outcomes

PROBE = Path(__file__).resolve().parent / "network_probe"
PROBE_PREFIX = "SN72-NETWORK-PROBE"
OFFLINE_SWITCHES = ("YOLO_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
MEMORY_LIMIT_MB = 200.0
PROBERS = 24  # registered validators that sign the probes, so the per-hotkey rate limit never meets a probe
FLOOD_PROBERS = 4  # kept apart for the floods (full buckets)


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Tests that open many connections need more descriptors than the default soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextmanager
def operator_environment() -> Iterator[None]:
    """While the miner is spawned: no offline switches, a soft fd limit of 1024, the network probe on its path."""
    saved = {name: os.environ.pop(name) for name in OFFLINE_SWITCHES if name in os.environ}
    saved_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROBE), saved_path) if p)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.environ.update(saved)
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path


@dataclass
class HostileMiner:
    process: MinerProcess
    cast: Cast
    target: Target
    _probers: Iterator[Any] = field(default_factory=lambda: iter(()))

    # -- identities ---------------------------------------------------------------------------------------------------
    def prober(self) -> Any:
        return next(self._probers)

    def flood_prober(self, i: int) -> Any:
        return self.cast.probers[PROBERS + i]

    def context(self, **overrides: Any) -> Context:
        """The attack context with a fresh prober as the (registered validator) attacker."""
        base = Context(self.target, self.cast.validator.hotkey.ss58_address, self.prober(), keypair("stranger"),
                       self.cast.non_validator.hotkey)
        return replace(base, **overrides)

    def attack(self, name: str, **overrides: Any) -> Observation:
        return asyncio.run(by_name()[name].observe(self.context(**overrides)))

    def attack_beside_validator(self, name: str, minimum_window_s: float = 3.0,
                                **overrides: Any) -> tuple[Observation, LoadStats]:
        """One catalogue attack while the honest validator sends 1 request/s; the miner must survive it."""
        with self.survives(), self.validator_load(rate_per_s=1.0) as load:
            started_s = time.monotonic()
            observation = self.attack(name, **overrides)
            time.sleep(max(0.0, started_s + minimum_window_s - time.monotonic()))  # a few honest requests
            stats = load.stats(started_s, time.monotonic())
        return observation, stats

    # -- the process --------------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.process.process.pid

    def status_field(self, name: str) -> str:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
        raise KeyError(name)

    def rss_mb(self) -> float:
        return int(self.status_field("VmRSS").split()[0]) / 1024

    def reset_peak(self) -> None:
        """Reset VmHWM, the kernel's record of peak resident memory (`5` to clear_refs), to measure one attack."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        return int(self.status_field("VmHWM").split()[0]) / 1024

    def log(self, since: int = 0) -> list[str]:
        return list(self.process.lines[since:])

    def settled_log(self, since: int, quiet_s: float = 0.5, limit_s: float = 5.0) -> list[str]:
        """The lines logged since `since`, once the pipe reader has caught up (no new line for quiet_s)."""
        count, changed_s, until_s = -1, time.monotonic(), time.monotonic() + limit_s
        while time.monotonic() < until_s:
            if len(self.process.lines) != count:
                count, changed_s = len(self.process.lines), time.monotonic()
            elif time.monotonic() - changed_s >= quiet_s:
                break
            time.sleep(0.05)
        return self.log(since)

    def answers(self, signer: Any | None = None) -> bool:
        """A signed request from a registered validator is answered with a probability (a real dendrite)."""
        image = encode_jpeg(synthetic_image(time.time_ns() % 1_000_000))
        return bool(asyncio.run(self._query(signer or self.prober(), image)).ok)

    def ask(self, signer: Any, images: list[str]) -> list[Any]:
        """Signed requests at once through a real dendrite: their `sn72_tools.client.Outcome`s."""

        async def all_at_once() -> list[Any]:
            return list(await asyncio.gather(*(self._query(signer, image) for image in images)))

        return asyncio.run(all_at_once())

    def _query(self, signer: Any, image: str) -> Any:
        """One signed request from a dendrite of its own (a coroutine)."""
        return signed_query(signer, self.target.port, self.target.miner_hotkey, image, host=self.target.host)

    def alive(self) -> bool:
        return self.process.alive() and self.answers()

    def refusals(self) -> dict[str, float]:
        """Refusal counters by reason (tests/factories/metrics.py knows the metric's name and label)."""
        return axon_outcomes(self.process.metrics_port)

    def validator_load(self, rate_per_s: float = 1.0) -> ValidatorLoad:
        return ValidatorLoad(self.cast.validator, self.target, rate_per_s=rate_per_s)

    @contextmanager
    def survives(self) -> Iterator[None]:
        """The block must leave the miner alive (answering) and its resident memory within MEMORY_LIMIT_MB."""
        before_mb = self.rss_mb()
        yield
        assert self.process.alive(), "the miner process died:\n" + "\n".join(self.log()[-30:])
        assert self.answers(), "the miner no longer answers a validator:\n" + "\n".join(self.log()[-30:])
        growth_mb = self.rss_mb() - before_mb
        assert growth_mb < MEMORY_LIMIT_MB, f"resident memory grew {growth_mb:.0f} MB during this attack"


@pytest.fixture(scope="package")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileMiner]:
    folder = tmp_path_factory.mktemp("hostile")
    cast = write_cast(folder, probers=PROBERS + FLOOD_PROBERS)
    tiny = cascade(folder / "models")
    with operator_environment():
        running = run_miner(folder, folder / "wallets", cast.miner, tiny, extra=miner_overrides())
        process = running.__enter__()
    try:
        miner = HostileMiner(process, cast, Target("127.0.0.1", process.port, process.hotkey),
                             _probers=itertools.cycle(cast.probers[:PROBERS]))
        for _ in range(3):  # warm: first requests allocate buffers that later ones reuse
            assert miner.answers(), "the miner does not answer before any attack:\n" + "\n".join(miner.log()[-30:])
        yield miner
    finally:
        running.__exit__(None, None, None)
