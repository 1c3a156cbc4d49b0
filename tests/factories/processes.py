"""Processes seen through /proc (Linux): a miner's children, and whether one has ended."""

from __future__ import annotations

from sn72_lab.process_cpu import children_of, stat_fields

__all__ = ["children_of", "gone"]


def gone(pid: int) -> bool:
    """No such process, or only its exit status left (a zombie that its new parent has not reaped yet)."""
    fields = stat_fields(pid)
    return fields is None or fields[0] == "Z"
