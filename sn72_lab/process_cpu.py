"""CPU seconds of a server and its children by role, read from /proc (Linux), for the axon benches: where a run's
CPU went per request (the miner process, its front processes, its worker processes), so a throughput figure comes
with the reason it is what it is."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    """The fields after the command name of /proc/PID/stat (state, ppid, ...), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (not zombies)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _cpu_s(pid: int) -> float | None:
    """User + system seconds of one live process, or None once it is gone."""
    fields = stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # utime, stime


def _role(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (FileNotFoundError, ProcessLookupError):
        return "other"
    if b"neurons.front" in command:
        return "fronts"
    if b"cascade.experts.worker_main" in command:
        return "worker"
    return "decode" if b"cascade.decode_worker" in command else "other"


def cpu_by_role(pid: int) -> dict[int, tuple[str, float]]:
    """{pid: (role, cpu seconds)} for the server and each of its children ("server", "fronts", "worker" for expert
    workers, "decode" for the isolated decoders, "other")."""
    figures: dict[int, tuple[str, float]] = {}
    own = _cpu_s(pid)
    if own is not None:
        figures[pid] = ("server", own)
    for child in children_of(pid):
        seconds = _cpu_s(child)
        if seconds is not None:
            figures[child] = (_role(child), seconds)
    return figures


def cpu_ms_per_request(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                       requests: int) -> dict[str, float]:
    """CPU milliseconds per request by role between two readings (a process that started in between counts from
    zero; one that ended in between is not counted)."""
    totals: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        totals[role] = totals.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return {role: round(1000 * seconds / max(1, requests), 3) for role, seconds in sorted(totals.items())}
