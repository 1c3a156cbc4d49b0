"""A generated labelled image folder (0/ and 1/), for the demo figures and the tests.

    python -m sn72_tools.evaluation.synthetic --out .demo/labelled --images 400

Scenes are smooth grey-green backgrounds; roadwork scenes (1/) add orange cones and striped
barriers, the others (0/) add as many shapes in other colours. Colour alone separates them, which
even random-weight tiny models partly pick up: enough to show fitting at work, nothing more.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ORANGE = (255, 110, 20)


def scene(rng: np.random.Generator, label: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    width, height = size
    small = rng.integers(60, 160, (6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        side = int(rng.integers(30, 90))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(height // 4, height - side))
        if label:
            draw.polygon([(x, y + side), (x + side // 2, y), (x + side, y + side)], fill=ORANGE)
            draw.rectangle([x, y + side // 2 - 3, x + side, y + side // 2 + 3], fill=(245, 245, 245))
        else:
            colour = tuple(int(c) for c in rng.integers(0, 120, 3))
            draw.rectangle([x, y, x + side, y + side], fill=colour)  # type: ignore[arg-type]
    return image


Scene = Callable[[np.random.Generator, int, tuple[int, int]], Image.Image]


def write_labelled_folder(out: Path, images: int, seed: int, size: tuple[int, int], draw_scene: Scene,
                          prefix: str = "") -> dict[int, int]:
    """`images` JPEGs of `draw_scene` split evenly into out/0 and out/1 (labels alternate); the count per label."""
    rng = np.random.default_rng(seed)
    counts = {0: 0, 1: 0}
    for label in (0, 1):
        (out / str(label)).mkdir(parents=True, exist_ok=True)
    for index in range(images):
        label = index % 2
        draw_scene(rng, label, size).save(out / str(label) / f"{prefix}{index:05d}.jpg", format="JPEG", quality=90)
        counts[label] += 1
    return counts


def make_labelled_folder(out: Path, images: int, seed: int = 0, size: tuple[int, int] = (320, 240)) -> dict[int, int]:
    """`images` JPEGs split evenly into out/0 and out/1; returns the count per label."""
    return write_labelled_folder(out, images, seed, size, scene)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write 0/ and 1/ into")
    parser.add_argument("--images", type=int, default=400, help="how many images (half of each label)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error(f"--images must be at least 2, got {args.images}")
    counts = make_labelled_folder(args.out, args.images, args.seed)
    print(f"wrote {args.images} images to {args.out} ({counts[0]} in 0/, {counts[1]} in 1/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
