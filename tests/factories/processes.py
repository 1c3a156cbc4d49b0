"""Processes seen through /proc (Linux): a miner's children, and whether one has ended."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """The fields after the command name of /proc/PID/stat (state, ppid, ...), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def gone(pid: int) -> bool:
    """No such process, or only its exit status left (a zombie that its new parent has not reaped yet)."""
    fields = _stat(pid)
    return fields is None or fields[0] == "Z"


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                out.append(int(entry.name))
    return out
