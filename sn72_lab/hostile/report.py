"""The red team's rows and how they are shown: a terminal table, Markdown for the docs, JSON for machines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.table import Table


@dataclass
class Row:
    attack: str
    how: str
    expected: str
    seen: str
    passed: bool  # expected statuses, no other problem, alive, and the line
    problems: list[str]
    alive: bool
    rss_growth_mb: float | None  # resident memory at the end minus at the start (kept)
    log_lines: int | None  # lines the miner logged during the attack (with --miner-log)
    validator_sent: int
    validator_answered: int
    validator_p50_ms: float  # of the answered requests
    validator_p99_ms: float
    elapsed_s: float
    model_share: float | None = None  # honest requests answered in time with a model answer (not the prior)
    honest_p50_ms: float = math.nan  # of every honest request, a miss at the time it took
    honest_p99_ms: float = math.nan
    server_errors: int = 0  # 500s in the attack's replies and the validator's
    rss_peak_growth_mb: float | None = None  # the peak while the attack ran, above the level at its start
    fd_peak: int | None = None
    line_failures: list[str] = field(default_factory=list)  # where the line was missed (empty: met)

    @property
    def line_passed(self) -> bool:
        return not self.line_failures


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0f}"


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def _share(row: Row) -> str:
    return "-" if row.model_share is None else f"{row.model_share:.0%} ({row.validator_sent})"


def table(rows: list[Row], total_growth_mb: float | None) -> Table:
    overall = "" if total_growth_mb is None else f" (resident memory growth overall {total_growth_mb:+.0f} MB)"
    out = Table(title="red team" + overall)
    for column in ("attack", "expected", "seen", "status ok", "model in time", "p50 ms", "p99 ms", "500s",
                   "RSS peak MB", "fd peak", "line", "pass"):
        out.add_column(column, no_wrap=True)
    for r in rows:
        out.add_row(r.attack, r.expected, r.seen[:40], "yes" if not r.problems and r.alive else "NO", _share(r),
                    _ms(r.honest_p50_ms), _ms(r.honest_p99_ms), str(r.server_errors), _mb(r.rss_peak_growth_mb),
                    "-" if r.fd_peak is None else str(r.fd_peak), "met" if r.line_passed else "MISSED",
                    "yes" if r.passed else "NO")
    return out


def markdown(rows: list[Row]) -> str:
    """The table as Markdown, for docs/security.md."""
    lines = ["| attack | expected | seen | status ok | honest: model answers in time | p50 / p99 ms | 500s | "
             "RSS peak growth MB | fd peak | pass |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        seen = r.seen if len(r.seen) <= 48 else r.seen[:45] + "..."
        status_ok = "yes" if not r.problems and r.alive else "**no**"
        verdict = "yes" if r.passed else "**no**"
        lines.append(f"| {r.attack} | {r.expected} | {seen} | {status_ok} | {_share(r)} | "
                     f"{_ms(r.honest_p50_ms)} / {_ms(r.honest_p99_ms)} | {r.server_errors} | "
                     f"{_mb(r.rss_peak_growth_mb)} | {'-' if r.fd_peak is None else r.fd_peak} | {verdict} |")
    return "\n".join(lines)


def why_not(rows: list[Row]) -> list[str]:
    """One line per failed attack: the status problems and where the line was missed."""
    return [f"{r.attack}: {'; '.join([*r.problems, *r.line_failures] or ['miner not alive'])}"
            for r in rows if not r.passed]


def _cells(row: dict | None) -> list[str]:
    """One side of a before/after row, from a report's JSON row (None: the attack was not in that run)."""
    if row is None:
        return ["-"] * 7
    share = row.get("model_share")
    p50, p99 = row.get("honest_p50_ms"), row.get("honest_p99_ms")
    peak, fds = row.get("rss_peak_growth_mb"), row.get("fd_peak")
    status_ok = not row["problems"] and row["alive"]
    return [row["seen"] if status_ok else f"**{row['seen'][:30]}**",
            "-" if share is None else f"{share:.0%} ({row['validator_sent']})",
            "-" if p50 is None or math.isnan(p50) else f"{p50:.0f} / {p99:.0f}", str(row.get("server_errors", 0)),
            _mb(peak), "-" if fds is None else str(fds), "yes" if row["passed"] else "**no**"]


def before_after(before: dict, after: dict) -> str:
    """Markdown: each attack of either report, its before and after side by side (reports as `--json` writes)."""
    old = {r["attack"]: r for r in before["attacks"]}
    new = {r["attack"]: r for r in after["attacks"]}
    names = list(old) + [name for name in new if name not in old]
    side = ["seen", "model answers in time", "p50 / p99 ms", "500s", "RSS peak MB", "fd peak", "pass"]
    lines = ["| attack | " + " | ".join(f"before: {c}" if i == 0 else c for i, c in enumerate(side)) + " | "
             + " | ".join(f"after: {c}" if i == 0 else c for i, c in enumerate(side)) + " |",
             "| --- " * (1 + 2 * len(side)) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_cells(old.get(name))) + " | " + " | ".join(_cells(new.get(name)))
                     + " |")
    return "\n".join(lines)
