"""A generated task a model can learn: small scenes with and without a striped traffic cone.

    python -m sn72_tools.training.synthetic --out .demo/cones --images 600 --width 72 --height 48

Both classes draw the same clutter (plain shapes in random colours, orange ones included) on a smooth
background; only roadwork scenes (1/) hold a cone: an orange triangle crossed by white stripes. Colour alone
does not separate the classes, so a model that gets them right has learned the pattern. The tests and the
training demo use it: a random-weight classifier answers it at chance, a trained one well above.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sn72_tools.evaluation.synthetic import write_labelled_folder

ORANGE = (255, 110, 20)
WHITE = (245, 245, 245)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.random() < 0.3:  # clutter is orange too, sometimes: colour alone is not the answer
        return ORANGE
    return (int(rng.integers(0, 256)), int(rng.integers(0, 256)), int(rng.integers(0, 256)))


def cone_scene(rng: np.random.Generator, label: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """One scene of `size` (width, height); a striped cone when `label` is 1."""
    width, height = size
    short = min(width, height)
    small = rng.integers(40, 200, (4, 4, 3)).astype(np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        w, h = int(rng.integers(short // 6, short // 3)), int(rng.integers(short // 6, short // 3))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        if rng.random() < 0.5:
            draw.rectangle([x, y, x + w, y + h], fill=_colour(rng))
        else:
            draw.ellipse([x, y, x + w, y + h], fill=_colour(rng))
    if label:
        cone_h = int(rng.integers(short * 3 // 5, short * 4 // 5))
        cone_w = cone_h * 2 // 3
        x, y = int(rng.integers(0, width - cone_w)), int(rng.integers(0, height - cone_h))
        draw.polygon([(x, y + cone_h), (x + cone_w // 2, y), (x + cone_w, y + cone_h)], fill=ORANGE)
        stripe = max(2, cone_h // 6)
        for level in (0.35, 0.65):  # two white bands across the cone, as on a real one
            top = y + int(cone_h * level)
            inset = int((1 - level) * cone_w / 2)
            draw.rectangle([x + inset - stripe // 2, top, x + cone_w - inset + stripe // 2, top + stripe], fill=WHITE)
    return image


def make_cone_folder(out: Path, images: int, seed: int = 0, size: tuple[int, int] = (64, 64)) -> dict[int, int]:
    """`images` JPEGs split evenly into out/0 and out/1 (names carry the seed: sets of two seeds never collide)."""
    return write_labelled_folder(out, images, seed, size, cone_scene, prefix=f"s{seed}-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write 0/ and 1/ into")
    parser.add_argument("--images", type=int, default=600, help="how many images (half of each label)")
    parser.add_argument("--width", type=int, default=72, help="image width in pixels")
    parser.add_argument("--height", type=int, default=48, help="image height in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images < 2 or min(args.width, args.height) < 16:
        parser.error(f"--images must be at least 2 and each side at least 16 px, got {args.images} and "
                     f"{args.width}x{args.height}")
    counts = make_cone_folder(args.out, args.images, args.seed, (args.width, args.height))
    print(f"wrote {args.images} images to {args.out} ({counts[0]} in 0/, {counts[1]} in 1/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
