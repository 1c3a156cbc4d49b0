"""The soak's record, its verdict and its report (JSON and a matplotlib plot); see sn72_lab/soak.py."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Line:
    """What a soak must hold. Model answers are counted outside the `after_kill_s` that follow a worker kill (the
    requests of the killed batch and of the restart are answered with the prior, by design)."""

    failed: int = 0  # requests without a valid answer within the validator's timeout
    model_share: float = 0.99
    after_kill_s: float = 30.0
    # The lowest RSS of the last quarter minus the lowest of the second. Floors, not medians: a reload holds two
    # models for seconds and a worker restart loads one again, so a quarter's middle sample can be a transient
    # peak (a one-minute soak once read +437 MB that way); a leak raises the floor between those peaks.
    rss_growth_mb: float = 100.0
    fd_growth: int = 16  # most fds in the last quarter minus the median of the first half


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    sent: int
    model: int
    prior: int
    failed: int
    p50_ms: float
    p99_ms: float
    metrics: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        m = self.metrics
        return (f"{self.t_s:7.0f}s rss {self.rss_mb:7.1f} MB fds {self.fds:4d} | {self.sent:3d} sent: "
                f"{self.model} model, {self.prior} prior, {self.failed} failed, p50 {self.p50_ms} ms p99 "
                f"{self.p99_ms} ms | reloads ok {m.get('reloads_ok', 0):.0f}/{m.get('reloads', 0):.0f}, worker "
                f"restarts {m.get('worker_restarts', 0):.0f} (exits {m.get('worker_exits', 0):.0f}), "
                f"store written {m.get('al_written', 0):.0f}, "
                f"write errors {m.get('al_write_errors', 0):.0f}")


@dataclass
class Soak:
    plan: dict[str, Any]
    disk: str
    samples: list[Sample] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[str, Any] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    alive_at_end: bool = False
    verdict: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"soak: {self.plan['minutes']} min, {self.answers.get('sent', 0)} requests: "
                 f"{self.answers.get('model', 0)} model answers, {self.answers.get('prior', 0)} prior, "
                 f"{self.answers.get('failed', 0)} failed; p50 {self.answers.get('p50_ms')} ms, "
                 f"p99 {self.answers.get('p99_ms')} ms; store: {self.disk}"]
        lines += [f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}" for name, (ok, detail) in
                  self.verdict.get("checks", {}).items()]
        lines.append("PASS" if self.verdict.get("pass") else "FAIL")
        return "\n".join(lines)


def _quarter(samples: list[Sample], first: float, last: float) -> list[Sample]:
    n = len(samples)
    return samples[int(first * n):max(int(first * n) + 1, int(last * n))]


def verdict(soak: Soak, line: Line = Line()) -> dict[str, Any]:
    kills = [event["t_s"] for event in soak.events if event["event"].startswith("kill")]
    sample_s = soak.plan["sample_s"]
    outside = [s for s in soak.samples
               if not any(k <= s.t_s and s.t_s - sample_s <= k + line.after_kill_s for k in kills)]
    sent_outside = sum(s.sent for s in outside)
    model_outside = sum(s.model for s in outside)
    share = model_outside / sent_outside if sent_outside else float("nan")
    reloads = [e for e in soak.events if e["event"].startswith("reload")]
    checks: dict[str, tuple[bool, str]] = {
        "alive": (soak.alive_at_end, "the miner ran to the end" if soak.alive_at_end else "the miner died"),
        "answered": (soak.answers.get("failed", 1) <= line.failed,
                     f"{soak.answers.get('failed')} requests without a valid answer in time (line {line.failed})"),
        "model answers": (share >= line.model_share,
                          f"{share:.4f} of {sent_outside} requests outside {line.after_kill_s:.0f}s after a worker "
                          f"kill (line {line.model_share})"),
        "reloads": (soak.final.get("reloads_ok", -1) >= len(reloads),
                    f"{soak.final.get('reloads_ok', 0):.0f} of {len(reloads)} reloads ok"),
    }
    if kills:
        after = [s for s in soak.samples if s.t_s > kills[0] + line.after_kill_s]
        resumed = sum(s.model for s in after)
        checks["worker restarted"] = (resumed > 0 or not after,
                                      f"{resumed} model answers after the worker kill's {line.after_kill_s:.0f}s")
    if len(soak.samples) >= 8:
        rss_growth = (min(s.rss_mb for s in _quarter(soak.samples, 0.75, 1.0))
                      - min(s.rss_mb for s in _quarter(soak.samples, 0.25, 0.5)))
        fd_growth = (max(s.fds for s in _quarter(soak.samples, 0.75, 1.0))
                     - statistics.median(s.fds for s in _quarter(soak.samples, 0.0, 0.5)))
        checks["rss"] = (not math.isnan(rss_growth) and rss_growth <= line.rss_growth_mb,
                         f"{rss_growth:+.1f} MB, lowest of the last quarter minus lowest of the second (line "
                         f"{line.rss_growth_mb})")
        checks["fds"] = (fd_growth <= line.fd_growth, f"{fd_growth:+.0f} fds (line {line.fd_growth})")
    return {"pass": all(ok for ok, _ in checks.values()), "checks": checks, "line": asdict(line)}


def write_report(soak: Soak, out: Path) -> None:
    (out / "soak.json").write_text(json.dumps(asdict(soak), indent=1, default=str))
    plot(soak, out / "soak.png")


def plot(soak: Soak, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s / 60 for s in soak.samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    axes[0].plot(t, [s.rss_mb for s in soak.samples])
    axes[0].set_ylabel("RSS, miner + workers (MB)")
    axes[1].plot(t, [s.fds for s in soak.samples])
    axes[1].set_ylabel("open fds")
    axes[2].plot(t, [s.p50_ms for s in soak.samples], label="p50")
    axes[2].plot(t, [s.p99_ms for s in soak.samples], label="p99")
    axes[2].set_ylabel("model answers (ms)")
    axes[2].legend()
    axes[3].plot(t, [s.model for s in soak.samples], label="model")
    axes[3].plot(t, [s.prior for s in soak.samples], label="prior")
    axes[3].plot(t, [s.failed for s in soak.samples], label="failed")
    axes[3].set_ylabel(f"answers per {soak.plan['sample_s']:.0f}s")
    axes[3].set_xlabel("minutes")
    axes[3].legend()
    for event in soak.events:
        for ax in axes:
            ax.axvline(event["t_s"] / 60, color="red" if event["event"].startswith("kill") else "grey",
                       linewidth=0.8, alpha=0.6)
    fig.suptitle(f"sn72-soak: {soak.plan['minutes']} min, {soak.disk} (grey: reloads, red: worker kill)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
