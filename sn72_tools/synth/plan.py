"""What image `index` of a run is: mode, label, seed, prompt, source frame and generation parameters.

Every job is a pure function of the run's settings and its index, so a re-run with the same settings rebuilds the
same jobs and skips the ones the manifest already holds (resume), and a larger `--count` only adds jobs.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sn72_tools.evaluation.datasets import FOLDER_LAYOUTS, IMAGE_SUFFIXES
from sn72_tools.synth.prompts import build_prompt, job_seed

# The validators' generation parameters (natix/validator/synthetic/config.py at 5d0756b; docs/synth.md).
VALIDATOR_STEPS = 25
VALIDATOR_GUIDANCE = 8.5
VALIDATOR_STRENGTH = 0.7
VALIDATOR_SIZE = 1024
MODES = ("t2i", "i2i", "both")
LABEL_FOLDERS = ("none", "roadwork")  # the eval and train tools' folder layout (sn72_tools/evaluation/datasets.py)


class SynthError(Exception):
    """Bad input the operator has to fix; the message is one line saying what and where."""


@dataclass(frozen=True)
class Settings:
    """What fixes the jobs: a re-run must give the same values to continue a folder (`count` may grow)."""

    model: str
    mode: str
    seed: int
    steps: int = VALIDATOR_STEPS
    guidance: float = VALIDATOR_GUIDANCE
    strength: float = VALIDATOR_STRENGTH
    size: int = VALIDATOR_SIZE
    frames: str | None = None
    image_format: str = "png"

    def fingerprint(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    index: int
    mode: str
    label: int
    seed: int
    prompt: str
    negative_prompt: str
    source_frame: str | None  # relative to the frames folder (i2i only)

    @property
    def name(self) -> str:
        return f"synth-{self.index:06d}-{self.mode}"

    def relative_path(self, image_format: str) -> str:
        return f"{LABEL_FOLDERS[self.label]}/{self.name}.{image_format}"


@dataclass(frozen=True)
class Frames:
    """The real frames i2i starts from, sorted so that a re-run picks the same ones.

    In a labelled folder (none/ and roadwork/, or 0/ and 1/, as the eval reads) a job draws a frame of its own
    label, as the validators do (they caption and transform a cached frame of the label they drew); in a flat
    folder any frame, and the label is the prompt's alone (a roadwork frame under a clear-road prompt at strength
    0.7 may keep its cones: docs/synth.md).
    """

    root: Path
    by_label: dict[int, list[Path]]  # -1: frames outside label folders

    @property
    def labelled(self) -> bool:
        return bool(self.by_label.get(0) or self.by_label.get(1))

    def pool(self, label: int) -> list[Path]:
        return self.by_label.get(label, []) if self.labelled else self.by_label[-1]


def frame_label(relative: Path) -> int:
    """0/1 for a frame inside a label folder (none/ or 0/, roadwork/ or 1/), -1 otherwise."""
    top = relative.parts[0].lower() if len(relative.parts) > 1 else ""
    return next((layout.index(top) for layout in FOLDER_LAYOUTS if top in layout), -1)


def list_frames(folder: Path) -> Frames:
    if not folder.is_dir():
        raise SynthError(f"--frames {folder}: not a folder")
    by_label: dict[int, list[Path]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        by_label.setdefault(frame_label(path.relative_to(folder)), []).append(path)
    if not by_label:
        raise SynthError(f"--frames {folder}: no images in it ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for paths in by_label.values():
        for path in paths:
            _check_frame(path)
    frames = Frames(folder, by_label)
    if frames.labelled and not (by_label.get(0) and by_label.get(1)):
        raise SynthError(f"--frames {folder}: label folders hold only one label; give both or a flat folder")
    return frames


def _check_frame(path: Path) -> None:
    """A frame that cannot be opened is a one-line error before any model loads (not a traceback a batch later)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, ImportError) as exc:
        # ImportError: ultralytics, once imported, patches Image.open to try a HEIF plugin on what PIL cannot read.
        raise SynthError(f"--frames: {path} is not a readable image ({type(exc).__name__}: {exc}); "
                         "remove or replace it") from exc


def make_job(settings: Settings, index: int, frames: Frames | None) -> Job:
    """Job `index`: labels alternate within each pair of indices in a seeded order (balanced at any count)."""
    rng = random.Random(job_seed(settings.seed, index))
    label = (index + random.Random(job_seed(settings.seed, index - index % 2)).randrange(2)) % 2
    mode = settings.mode if settings.mode != "both" else ("t2i", "i2i")[index // 2 % 2]
    prompt = build_prompt(label, rng, mode)
    source = None
    if mode == "i2i":
        assert frames is not None, "i2i needs frames (checked by the CLI)"
        pool = frames.pool(label)
        source = pool[rng.randrange(len(pool))].relative_to(frames.root).as_posix()
    return Job(index, mode, label, job_seed(settings.seed, index), prompt.text, prompt.negative, source)
