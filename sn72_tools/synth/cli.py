"""sn72-synth: labelled SDXL images like the validators' synthetic third (docs/synth.md).

    sn72-synth --out data/synth --count 2000                                  # text to image, 1024x1024
    sn72-synth --out data/synth-i2i --count 2000 --mode i2i --frames data/roadwork-frames
    sn72-synth --out data/synth --count 4000                                  # same settings: continues to 4000

The folder holds none/ and roadwork/ (what sn72-eval and sn72-train read), manifest.jsonl (prompt, negative
prompt, seed, steps, guidance, size, mode, source frame and sha256 of each image) and synth-run.json (the settings;
a re-run must give the same ones, `--count` may grow). Exit 2 on bad input, with one line saying what to fix.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from sn72_tools.synth.plan import (
    MODES,
    VALIDATOR_GUIDANCE,
    VALIDATOR_SIZE,
    VALIDATOR_STEPS,
    VALIDATOR_STRENGTH,
    Settings,
    SynthError,
)

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        self.exit(2, f"sn72-synth: error: {message} (see --help)\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="sn72-synth", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="dataset folder (created; continued if it exists)")
    parser.add_argument("--count", type=int, required=True,
                        help="jobs 0..count-1 done (an image each, bar refused duplicates)")
    parser.add_argument("--mode", choices=MODES, default="t2i",
                        help="t2i, i2i (needs --frames) or both (pairs of each in turn)")
    parser.add_argument("--frames", type=Path, default=None,
                        help="real frames i2i starts from; in none/ and roadwork/ (or 0/ and 1/) each job gets one "
                             "of its own label")
    parser.add_argument("--model", default=SDXL_BASE, help=f"hub id or saved pipeline folder (default {SDXL_BASE})")
    parser.add_argument("--variant", default=None,
                        help="weights variant: fp16 (default for a hub id: what sn72-download-models --synth-model "
                             "fetches) or none (default for a folder)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; image i's seed derives from it and i")
    parser.add_argument("--steps", type=int, default=VALIDATOR_STEPS, help="denoising steps (validators: 25)")
    parser.add_argument("--guidance", type=float, default=VALIDATOR_GUIDANCE, help="guidance scale (validators: 8.5)")
    parser.add_argument("--strength", type=float, default=VALIDATOR_STRENGTH, help="i2i strength (validators: 0.7)")
    parser.add_argument("--size", type=int, default=VALIDATOR_SIZE,
                        help="t2i side, and the side i2i frames are squashed to (validators: 1024)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--format", dest="image_format", choices=("png", "jpeg"), default="png",
                        help="png (the validators' cache) or jpeg at PIL's default quality (what the wire carries)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """The run's settings, every bound checked; a SynthError names the flag."""
    checks = [
        (args.count >= 1, f"--count must be at least 1, got {args.count}"),
        (args.steps >= 1, f"--steps must be at least 1, got {args.steps}"),
        (args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}"),
        (args.guidance >= 0, f"--guidance must be at least 0, got {args.guidance}"),
        (0 < args.strength <= 1, f"--strength must be in (0, 1], got {args.strength}"),
        (args.size >= 64 and args.size % 8 == 0, f"--size must be a multiple of 8, at least 64, got {args.size}"),
        (args.mode == "t2i" or args.frames is not None, f"--mode {args.mode} needs --frames (real frames to start at)"),
        (args.mode != "t2i" or args.frames is None, "--frames is read only by --mode i2i or both"),
        (not args.out.exists() or args.out.is_dir(), f"--out {args.out}: exists and is not a folder"),
    ]
    for ok, message in checks:
        if not ok:
            raise SynthError(message)
    frames = None
    if args.frames is not None:
        if not args.frames.is_dir():
            raise SynthError(f"--frames {args.frames}: not a folder")
        frames = str(args.frames.expanduser().resolve())
    return Settings(model=args.model, mode=args.mode, seed=args.seed, steps=args.steps, guidance=args.guidance,
                    strength=args.strength, size=args.size, frames=frames, image_format=args.image_format)


def variant_for(model: str, variant: str | None) -> str | None:
    """The weights variant to load: as given ("none" for the full-precision files), else fp16 for a hub id."""
    from sn72_tools.synth.snapshot import DEFAULT_VARIANT

    if variant is not None:
        return None if variant.lower() == "none" else variant
    return None if Path(model).expanduser().exists() else DEFAULT_VARIANT


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from(args)
        from sn72_tools.synth.pipelines import default_device, load_pipelines
        from sn72_tools.synth.run import run

        device = args.device or default_device()
        variant = variant_for(settings.model, args.variant)
        summary = run(args.out, settings, args.count, args.batch_size,
                      lambda: load_pipelines(settings.model, device, variant), progress=not args.no_progress)
    except SynthError as exc:
        print(f"sn72-synth: error: {exc}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
