"""One run of sn72-synth: plan the jobs, skip what the manifest holds, generate the rest in batches, record each.

Resumable by construction (sn72_tools/synth/manifest.py says how each kind of kill is repaired), and refusing
duplicates: an image whose bytes hash like an earlier image of the folder is not written; its job is recorded as
`duplicate` (so a re-run does not make it again) and the summary names it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sn72_tools.synth.manifest import (
    MANIFEST,
    Manifest,
    check_settings,
    clean_leftovers,
    record_for,
    sha256,
    write_atomically,
)
from sn72_tools.synth.pipelines import Pipelines, batch_key, encode, generate
from sn72_tools.synth.plan import LABEL_FOLDERS, Job, Settings, SynthError, list_frames, make_job


@dataclass
class Summary:
    out: Path
    planned: int
    already: int = 0  # recorded by an earlier run
    written: int = 0
    adopted: int = 0  # whole images an earlier run renamed into place but was killed before recording
    temp_removed: int = 0
    torn_bytes: int = 0
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (index refused, index it repeats)
    labels: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        images = sum(self.labels.values())
        text = [f"summary: {images} image(s) in {self.out} ({self.written} written now, {self.already} recorded "
                f"before, {self.adopted} adopted after a kill); labels {self.labels}; {self.seconds:.1f} s"]
        if self.temp_removed or self.torn_bytes:
            text.append(f"repaired after a kill: {self.temp_removed} temp file(s) removed, "
                        f"{self.torn_bytes} byte(s) of a torn manifest line cut")
        refused = ", ".join(f"{index} (same bytes as {earlier})" for index, earlier in self.duplicates[:10])
        more = f" and {len(self.duplicates) - 10} more" if len(self.duplicates) > 10 else ""
        text.append(f"duplicates refused: {len(self.duplicates)}" + (f": {refused}{more}" if refused else ""))
        return text


def _finish(job: Job, data: bytes, size: tuple[int, int], settings: Settings, out: Path, manifest: Manifest,
            summary: Summary, already_on_disk: bool) -> None:
    """Write (unless on disk already) and record one image, or refuse it as a duplicate."""
    digest = sha256(data)
    earlier = manifest.hashes.get(digest)
    if earlier is not None and earlier != job.index:
        if already_on_disk:
            (out / job.relative_path(settings.image_format)).unlink()
        manifest.append(record_for(job, settings, "duplicate", digest, size, None, duplicate_of=earlier))
        summary.duplicates.append((job.index, earlier))
        return
    relative = job.relative_path(settings.image_format)
    if not already_on_disk:
        write_atomically(out / relative, data)
    manifest.append(record_for(job, settings, "written", digest, size, relative))
    if already_on_disk:
        summary.adopted += 1
    else:
        summary.written += 1


def run(out: Path, settings: Settings, count: int, batch_size: int,
        load: Callable[[], Pipelines], progress: bool = True) -> Summary:
    """Make jobs 0..count-1 of `settings` in `out` that are not there yet. `load` is called only if any is missing."""
    from PIL import Image

    started = time.monotonic()
    check_settings(out, settings)
    try:
        for folder in LABEL_FOLDERS:
            (out / folder).mkdir(parents=True, exist_ok=True)
            probe = out / folder / ".sn72-synth-write-check"
            probe.write_bytes(b"")  # before any model loads: a read-only folder is found in a second, not minutes
            probe.unlink()
    except OSError as exc:
        raise SynthError(f"--out {out}: cannot write there ({type(exc).__name__}: {exc})") from exc
    summary = Summary(out, count, temp_removed=clean_leftovers(out))
    manifest = Manifest.open(out / MANIFEST)
    summary.torn_bytes = manifest.torn_bytes
    frames_root = Path(settings.frames) if settings.frames else None
    frames = list_frames(frames_root) if frames_root is not None else None
    jobs = [make_job(settings, index, frames) for index in range(count)]
    summary.already = sum(job.index in manifest.records for job in jobs)
    pending = []
    for job in jobs:
        if job.index in manifest.records:
            continue
        on_disk = out / job.relative_path(settings.image_format)
        if on_disk.is_file():  # renamed into place, then killed before its line: the bytes are whole
            data = on_disk.read_bytes()
            try:
                with Image.open(on_disk) as found:
                    found.load()  # the whole image: a file cut short is made again, not adopted
                    size = found.size
            except (OSError, ValueError, SyntaxError):
                on_disk.unlink()
                pending.append(job)
                continue
            _finish(job, data, size, settings, out, manifest, summary, already_on_disk=True)
        else:
            pending.append(job)
    if pending:
        pipelines = load()
        buckets: dict[tuple[object, ...], list[Job]] = {}
        with tqdm(total=len(pending), desc="sn72-synth", unit="img", disable=not progress) as bar:
            for position, job in enumerate(pending):
                bucket = buckets.setdefault(batch_key(job, frames_root, settings.size), [])
                bucket.append(job)
                last = position == len(pending) - 1
                for key in [key for key, batch in buckets.items() if len(batch) >= batch_size or last]:
                    batch = buckets.pop(key)
                    for done, image in zip(batch, generate(pipelines, batch, settings, frames_root), strict=True):
                        data = encode(image, settings.image_format)
                        _finish(done, data, image.size, settings, out, manifest, summary, already_on_disk=False)
                    bar.update(len(batch))
                    bar.set_postfix(duplicates=len(summary.duplicates))
    for label, folder in enumerate(LABEL_FOLDERS):
        summary.labels[folder] = sum(1 for record in manifest.records.values()
                                     if record.get("status") == "written" and record["label"] == label
                                     and record["index"] < count)
    summary.seconds = time.monotonic() - started
    return summary
