"""Hot reload for the miner process: SIGHUP (or, opt-in, a changed cascade or calibration file) puts the
cascade file's current content in service without a restart (docs/reload.md).

The miner's serving loop calls `Reloader.poll()` every half second; the SIGHUP handler calls
`request()`, which only records the wish. A reload runs on a thread of its own, one at a time:
read and validate the cascade YAML (and the calibration file it names), then `Engine.reload`,
which keeps unchanged replicas, loads and warms the others beside the serving ones and swaps.
Anything that fails leaves the serving cascade in place and is logged in one line. Where the new
cascade only fits once the serving one is gone and `reload.drain_restart` is on, `poll()` answers
True: the miner drains and exits with RESTART_EXIT_CODE, and pm2 starts it again on the new cascade.

A cascade goes in under its served version (cascade/served_version.py: the models' content is in it), and the
metrics that name it (`sn72_miner_cascade_info`, `sn72_miner_build_info`) follow every swap. `state()` is what the
metrics port's `/status` reports: `sn72-miner reload` (neurons/reload_command.py) reads it to learn the outcome of
the reload its signal asked for.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Info
from pydantic import ValidationError

from cascade.config import CascadeConfig, format_validation_error, load_cascade
from cascade.process_metrics import build_labels
from cascade.served_version import served
from cascade.serving import ReloadKind, ReloadRefused, ReloadReport
from cascade.threads import lower_priority

RESTART_EXIT_CODE = 75  # EX_TEMPFAIL: drained on purpose, to be started again (pm2's autorestart)
OUTCOMES = ["none", *(kind.value for kind in ReloadKind), "refused_invalid", "refused_placement", "refused_load",
            "refused_warmup", "refused_closed", "failed"]


@dataclass(frozen=True)
class ReloadOutcome:
    outcome: str  # one of OUTCOMES
    reason: str  # what asked for it: SIGHUP, a file change
    message: str  # the log line
    seconds: float  # from the start of the reload to the swap or the refusal
    report: ReloadReport | None = None
    covers: int = 0  # every request (`Reloader.asked`) up to this one was asked before this reload read the files
    ended_unix: float = 0.0


def read_served(path: Path) -> CascadeConfig:
    """The cascade file as the miner serves it: validated, calibrated, under its served version."""
    return served(load_cascade(path))


class ReloadMetrics:
    """The serving cascade and the last reload, as prometheus_client objects in the miner's registry."""

    def __init__(self, registry: CollectorRegistry, retiring: Callable[[], int], build: Info | None = None) -> None:
        self.cascade = Info("sn72_miner_cascade", "The cascade being served: version (with the calibration's hash), "
                            "release, calibration file", registry=registry)
        self.reloads = Counter("sn72_miner_reloads", "Reloads by outcome", ["outcome"], registry=registry)
        for outcome in OUTCOMES[1:]:  # every outcome exported from the start: a dashboard's increase() sees the first
            self.reloads.labels(outcome)
        self.build = build  # sn72_miner_build_info (cascade/process_metrics.py), re-labelled on every swap
        self.last = Enum("sn72_miner_last_reload", "Outcome of the last reload", states=OUTCOMES, registry=registry)
        self.last_time = Gauge("sn72_miner_last_reload_timestamp_seconds", "Unix time the last reload ended",
                               registry=registry)
        self.last_duration = Gauge("sn72_miner_last_reload_duration_seconds",
                                   "The last reload, from its start to the swap (or the refusal)", registry=registry)
        retiring_gauge = Gauge("sn72_miner_cascades_retiring", "Replaced cascades not yet freed (requests still "
                               "hold them)", registry=registry)
        retiring_gauge.set_function(lambda: float(retiring()))

    def serving(self, cascade: CascadeConfig) -> None:
        calibration = cascade.calibration.name if cascade.calibration is not None else "none"
        self.cascade.info({"version": cascade.version, "release": cascade.release, "calibration": calibration})
        if self.build is not None:  # an Info holds one label set: the old one is gone from the next scrape on
            self.build.info(build_labels(cascade))

    def ended(self, outcome: ReloadOutcome) -> None:
        self.reloads.labels(outcome.outcome).inc()
        self.last.state(outcome.outcome)
        self.last_time.set_to_current_time()
        self.last_duration.set(outcome.seconds)


class Reloader:
    """Reloads the cascade file into a running engine when asked to, or when the files change (opt-in)."""

    def __init__(self, engine: Any, cascade_file: Path, watch: bool = False, watch_settle_s: float = 1.0,
                 drain_restart: bool = False, registry: CollectorRegistry | None = None,
                 read: Callable[[Path], CascadeConfig] = read_served, build_info: Info | None = None) -> None:
        self.engine = engine
        self.cascade_file = cascade_file
        self.watch = watch
        self.watch_settle_s = watch_settle_s
        self.drain_restart = drain_restart
        self._read = read
        self.metrics = ReloadMetrics(registry or CollectorRegistry(), engine.retiring, build_info)
        self.metrics.serving(engine.config.cascade)
        self.restart_requested = False
        self.last: ReloadOutcome | None = None
        self.completed = 0  # reloads ended (for tests and the bench; read the outcome in `last`)
        self.asked = 0  # requests so far (signals, file changes): a reload started after the n-th covers it
        self._pending: str | None = None
        self._worker: threading.Thread | None = None
        self._seen = self._fingerprint()
        self._candidate: tuple[tuple[str, ...], float] | None = None
        self._covers = 0  # the reload running now covers the requests up to this one

    # -- triggers (the miner's main thread) ---------------------------------------------------
    def request(self, reason: str = "SIGHUP") -> None:
        """Ask for a reload at the next poll. Safe in a signal handler: Python runs it on the main thread between
        two bytecodes, and `poll()`, the only other writer, runs on the main thread too."""
        self.asked += 1
        self._pending = reason

    def poll(self, now_s: float | None = None) -> bool:
        """Start a reload that was asked for, or whose files changed and settled; True: drain and restart."""
        if self._worker is not None and not self._worker.is_alive():
            self._worker = None
        reason = self._pending
        if reason is None and self.watch:
            reason = self._changed(time.monotonic() if now_s is None else now_s)
        if reason is not None and self._worker is None:
            if self._pending is None:
                self.asked += 1  # a file change asks too
            self._pending = None
            self._seen, self._candidate = self._fingerprint(), None
            self._worker = threading.Thread(target=self._reload_nicely, args=(reason, self.asked), name="reload",
                                            daemon=True)
            self._worker.start()
        return self.restart_requested

    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def state(self) -> dict[str, Any]:
        """The serving version and the last reload, as JSON for the metrics port's `/status` (any thread)."""
        last = self.last
        return {
            "serving": self.engine.config.cascade.version, "cascade_file": str(self.cascade_file),
            "reloading": self.busy(), "asked": self.asked, "restart_requested": self.restart_requested,
            "last_reload": None if last is None else {
                "outcome": last.outcome, "reason": last.reason, "message": last.message, "seconds": last.seconds,
                "covers": last.covers, "ended_unix": last.ended_unix},
        }

    def _files(self) -> list[Path]:
        calibration = self.engine.config.cascade.calibration
        return [self.cascade_file] + ([calibration] if calibration is not None else [])

    def _fingerprint(self) -> tuple[str, ...]:
        """Content digests of the cascade file and its calibration file (a file that cannot be read: 'missing')."""
        digests = []
        for path in self._files():
            try:
                digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
            except OSError:
                digests.append("missing")
        return tuple(digests)

    def _changed(self, now_s: float) -> str | None:
        """'file change' once the files differ from the last reload's and have stayed the same `watch_settle_s`."""
        current = self._fingerprint()
        if current == self._seen:
            self._candidate = None
            return None
        if self._candidate is None or self._candidate[0] != current:
            self._candidate = (current, now_s)  # an editor may still be writing: wait until it settles
            return None
        return "file change" if now_s - self._candidate[1] >= self.watch_settle_s else None

    # -- the reload (its own thread) ----------------------------------------------------------
    def _reload_nicely(self, reason: str, covers: int) -> None:
        """Loading and warming up are optional work beside serving: at the engine's worker niceness."""
        lower_priority(self.engine.config.scheduler.worker_nice)
        self.reload(reason, covers)

    def reload(self, reason: str = "SIGHUP", covers: int = 0) -> ReloadOutcome:
        """Read, validate and put the cascade file in service; the outcome is logged in one line and counted."""
        began = time.monotonic()
        self._covers = covers
        serving = self.engine.config.cascade.version
        try:
            cascade = self._read(self.cascade_file)
        except ValidationError as exc:
            problems = "; ".join(format_validation_error(exc).splitlines())
            return self._end(reason, "refused_invalid", f"invalid cascade in {self.cascade_file}: {problems}; "
                             f"still serving {serving}", began)
        except (ValueError, OSError) as exc:  # unreadable YAML, or a calibration that does not fit the cascade
            return self._end(reason, "refused_invalid", f"invalid cascade in {self.cascade_file}: {exc}; "
                             f"still serving {serving}", began)
        try:
            report = self.engine.reload(cascade)
        except ReloadRefused as exc:
            message = f"{exc.stage}: {exc}"
            if exc.stage == "placement" and exc.restart_fits and self.drain_restart:
                self.restart_requested = True
                message += "; reload.drain_restart is on: draining, then exiting for a restart on the new cascade"
            return self._end(reason, f"refused_{exc.stage}", message + f"; still serving {serving}", began)
        except Exception as exc:  # noqa: BLE001 - a reload that fails for any reason leaves the old cascade serving
            logger.opt(exception=exc).debug("reload failed")
            return self._end(reason, "failed", f"{exc!r}; still serving {serving}", began)
        self.metrics.serving(cascade)
        if report.kind is ReloadKind.UNCHANGED:
            message = f"the cascade file is unchanged; still serving {report.version}"
        else:
            message = (f"{report.kind.value} -> serving {report.version} (was {serving}); loaded "
                       f"{', '.join(report.loaded) or 'nothing'} in {report.load_s:.2f}s; kept {report.kept} "
                       f"replica(s); freeing {', '.join(report.dropped) or 'nothing'} once its requests are answered")
        return self._end(reason, report.kind.value, message, began, report)

    def _end(self, reason: str, outcome: str, message: str, began_s: float,
             report: ReloadReport | None = None) -> ReloadOutcome:
        result = ReloadOutcome(outcome, reason, " ".join(message.split()), time.monotonic() - began_s, report,
                               self._covers, time.time())
        if outcome.startswith(("refused", "failed")):
            logger.error("reload ({}) {} after {:.3f}s: {}", reason, outcome, result.seconds, result.message)
        else:
            logger.info("reload ({}) done in {:.3f}s: {}", reason, result.seconds, result.message)
        self.metrics.ended(result)
        self.last = result
        self.completed += 1
        return result
