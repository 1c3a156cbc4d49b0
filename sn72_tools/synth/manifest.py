"""The run's record: one JSON line per finished job (written image or refused duplicate), appended and fsynced.

Order of a job's writes: image bytes to `<name>.<ext>.tmp`, fsync, rename to the final name (atomic: a reader
sees the whole image or none), then the manifest line. A kill can leave (a) a `.tmp` file: deleted on the next
start and never read by the dataset readers (its suffix is not an image's); (b) a whole image with no line: adopted
on the next start from the job it is named after (same bytes the job would write again); (c) a torn last line:
cut off on the next start. So a re-run with the same settings continues where the last one stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sn72_tools.synth.plan import Job, Settings, SynthError

MANIFEST = "manifest.jsonl"
RUN_FILE = "synth-run.json"  # the settings the folder was started with (not state.json: the eval reads that as HF)


@dataclass
class Manifest:
    path: Path
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    hashes: dict[str, int] = field(default_factory=dict)  # content hash -> index of the image that has it
    torn_bytes: int = 0  # a partial last line cut off at open (a kill during an append)

    @classmethod
    def open(cls, path: Path) -> Manifest:
        manifest = cls(path)
        if not path.exists():
            return manifest
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line without its newline was being written when the run died
            manifest.torn_bytes = len(data) - end
            with path.open("r+b") as handle:
                handle.truncate(end)
        for number, line in enumerate(data[:end].splitlines(), 1):
            try:
                record = json.loads(line)
                index = int(record["index"])
            except (ValueError, KeyError, TypeError) as exc:
                raise SynthError(f"{path}:{number}: not a manifest record ({exc}); move the file away") from exc
            manifest._remember(index, record)
        return manifest

    def _remember(self, index: int, record: dict[str, Any]) -> None:
        self.records[index] = record
        if record.get("status") == "written":
            self.hashes.setdefault(record["sha256"], index)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self._remember(int(record["index"]), record)

    def written(self) -> int:
        return sum(record.get("status") == "written" for record in self.records.values())


def record_for(job: Job, settings: Settings, status: str, sha256: str, size: tuple[int, int],
               path: str | None, duplicate_of: int | None = None) -> dict[str, Any]:
    """A manifest line: everything needed to make the image again, and its content hash."""
    record: dict[str, Any] = {
        **asdict(job), "status": status, "path": path, "sha256": sha256, "width": size[0], "height": size[1],
        "steps": settings.steps, "guidance": settings.guidance, "model": settings.model,
        "strength": settings.strength if job.mode == "i2i" else None,
    }
    if duplicate_of is not None:
        record["duplicate_of"] = duplicate_of
    return record


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    """`path` holds all of `data` or is untouched: temp file, fsync, rename."""
    temp = path.with_name(path.name + ".tmp")
    with temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def check_settings(out: Path, settings: Settings) -> None:
    """Refuse to continue a folder started with other settings (its images would not be this run's jobs)."""
    run_file = out / RUN_FILE
    wanted = settings.fingerprint()
    if not run_file.exists():
        out.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        return
    try:
        found = json.loads(run_file.read_text())
    except ValueError as exc:
        raise SynthError(f"{run_file}: unreadable ({exc}); move the folder away or fix the file") from exc
    changed = sorted(key for key in wanted.keys() | found.keys() if wanted.get(key) != found.get(key))
    if changed:
        diffs = ", ".join(f"{key} {found.get(key)!r} -> {wanted.get(key)!r}" for key in changed)
        raise SynthError(f"{out} was started with other settings ({diffs}); use the same ones or a new --out")


def clean_leftovers(out: Path) -> int:
    """Delete the temp files a killed run left (never counted: their suffix is not an image's)."""
    removed = 0
    for temp in out.glob("*/*.tmp"):
        temp.unlink()
        removed += 1
    return removed
