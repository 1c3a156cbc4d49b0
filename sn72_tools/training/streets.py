"""Generated street scenes with and without roadwork, at the sizes validators send (dashcam frames, SDXL squares).

    python -m sn72_tools.training.streets --out .demo/streets --images 1000 --seed 0       # 480x480 .. 1920x1080
    python -m sn72_tools.training.streets --out /tmp/streets --images 400 --seed 0 --small # sides of 240 px at most

Every scene is a street in perspective (pinhole geometry: objects keep their real size in metres wherever they
stand): sky, a skyline and facades, a road with lane markings and shadows, sidewalks, cars, poles, trees, people
and signs, in varied light (day, overcast, dusk, night) and camera placement. A roadwork scene (1/) adds two or
three groups of: a lane closed by a taper of cones, drums or barriers, a row of cones or drums, striped barriers,
a roadwork sign, an excavator, workers in hi-vis, a dug patch with its heap and orange net, each starting
6.6-10 m ahead (the bottom row is 6 m). Distractors (orange and red cars, pedestrians in orange, red-and-white
bollards, kerbs and awnings, warning and other signs, dark road patches) appear in both classes, more in the scenes
without roadwork: a colour-histogram classifier is near chance, so colour alone does not decide.

NOTE: the difficulty is set so that `small-cnn` (sn72_lab/tiny_models.py) at 112 px learns it from scratch on a CPU
and visibly gains from more labelled images (docs/bench/cpu/2026-12-04/small-cnn/). With the roadwork up to 25 m
away, one group and more distractors, it stayed near 0.55-0.70 held-out accuracy even from 1,000 images.

Image `i` of seed `s` is drawn from its own generator (`default_rng([s, i])`): the same seed gives the same bytes,
whatever the count, and the first N images of a larger set are the set of N.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sn72_tools.training import street_objects as obj

Size = tuple[int, int]  # width, height
# Dashcam frames (16:9, 4:3) and SDXL's native resolutions (squares and near-squares), all within 1920x1080.
FULL_SIZES: tuple[Size, ...] = ((1920, 1080), (1280, 720), (1344, 768), (1152, 896), (1024, 1024), (768, 768),
                                (640, 480), (480, 480))
NEAR_Z_M = 6.0  # the nearest ground the camera sees (the bottom row), metres
ROAD_HALF_M = 5.0  # the road's half width, metres (two lanes); sidewalks 2.5 m beyond
ROADWORK = ("closure", "cones", "drums", "barriers", "sign", "excavator", "workers", "dug")
ROADWORK_WEIGHTS = np.array([6, 2, 1, 1.5, 1, 1, 1, 1.5])
CUE_FARTHEST_M = 10.0  # roadwork stands within this (t >= 0.6): the difficulty knob (at 25 m a small CNN barely learns)
GROUPS = (2, 3)  # roadwork groups per roadwork scene, drawn uniformly from these
DISTRACTORS = (1, 2)  # distractors per scene, at least and at most
EXTRA_DISTRACTORS = 1  # up to this many more in a scene without roadwork
DECOR = 0.5  # scales the chance of red-and-white kerbs (10%) and awnings (15%)


def scaled_sizes(max_side: int, sizes: Sequence[Size] = FULL_SIZES) -> tuple[Size, ...]:
    """`sizes` shrunk (aspect kept) so that no side exceeds `max_side`."""
    out = []
    for width, height in sizes:
        f = min(1.0, max_side / max(width, height))
        out.append((max(16, round(width * f)), max(16, round(height * f))))
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Camera:
    """Ground point (depth z in metres, lateral u in metres, right positive) -> pixels; t = NEAR_Z_M / z."""

    width: int
    height: int
    horizon: float  # y of the horizon
    vx: float  # x of the vanishing point
    bx: float  # x of the road's centre at the bottom row
    near_px_m: float  # pixels per metre at the bottom row

    def t(self, z: float) -> float:
        return NEAR_Z_M / z

    def x(self, z: float, u: float) -> float:
        t = self.t(z)
        return self.vx + (self.bx - self.vx) * t + u * self.near_px_m * t

    def y(self, z: float) -> float:
        return self.horizon + (self.height - self.horizon) * self.t(z)

    def m(self, z: float) -> float:
        return self.near_px_m * self.t(z)

    def ground(self, z: float, u: float) -> tuple[float, float]:
        return self.x(z, u), self.y(z)

    def quad(self, z0: float, z1: float, u0: float, u1: float) -> list[tuple[float, float]]:
        return [self.ground(z0, u0), self.ground(z0, u1), self.ground(z1, u1), self.ground(z1, u0)]


Sprite = tuple[float, Callable[[], None]]  # (depth, draw it): drawn far to near

LIGHTS = {  # sky top, sky at the horizon, (gain, gamma) range, tint
    "day": ((70, 130, 210), (185, 210, 235), (0.95, 1.15), (1.0, 1.0, 1.0)),
    "overcast": ((150, 155, 165), (205, 208, 212), (0.8, 1.0), (0.97, 1.0, 1.04)),
    "dusk": ((60, 60, 120), (245, 150, 80), (0.6, 0.85), (1.1, 0.95, 0.85)),
    "night": ((10, 12, 30), (45, 45, 70), (0.35, 0.55), (0.9, 0.95, 1.15)),
}


def _sky(size: Size, horizon: int, top: tuple[int, ...], bottom: tuple[int, ...]) -> Image.Image:
    width, _ = size
    rows = np.linspace(0.0, 1.0, max(2, horizon))[:, None]
    column = (np.array(top)[None] * (1 - rows) + np.array(bottom)[None] * rows).astype(np.uint8)
    sky = Image.fromarray(column[:, None, :].repeat(2, axis=1)).resize((width, max(2, horizon)),
                                                                      Image.Resampling.BILINEAR)
    image = Image.new("RGB", size)
    image.paste(sky, (0, 0))
    return image


def _light(image: Image.Image, rng: np.random.Generator, light: str) -> Image.Image:
    """The scene's light as one lookup table per channel: gain, tint and gamma."""
    _, _, (low, high), tint = LIGHTS[light]
    gain, gamma = rng.uniform(low, high), rng.uniform(0.8, 1.25)
    levels = np.arange(256) / 255.0
    table: list[int] = []
    for channel in range(3):
        curve = np.clip(gain * tint[channel] * levels ** gamma, 0, 1) * 255
        table += curve.astype(np.uint8).tolist()
    return image.point(table)


def _facades(draw: ImageDraw.ImageDraw, cam: Camera, rng: np.random.Generator, side: int) -> None:
    """Buildings along one side of the street, far first, with rows of windows and sometimes a striped awning."""
    setback = float(rng.uniform(7.5, 12))
    spans, z = [], NEAR_Z_M * 0.6
    while z < 400:
        length = float(rng.uniform(8, 30))
        spans.append((z, z + length))
        z += length
    for z0, z1 in reversed(spans):
        if rng.random() < 0.15:
            continue  # a gap between buildings
        tall = float(rng.uniform(6, 25))
        wall = obj.jitter(rng, ((150, 140, 130), (170, 110, 90), (200, 190, 170), (120, 125, 130))[rng.integers(4)], 20)
        u = side * setback

        def pt(z: float, up: float, u: float = u) -> tuple[float, float]:
            return cam.x(z, u), cam.y(z) - up * cam.m(z)

        draw.polygon([pt(z0, 0), pt(z1, 0), pt(z1, tall), pt(z0, tall)], fill=wall)
        glass = (60, 75, 95) if rng.random() < 0.7 else (200, 190, 120)
        step = 3.0 if cam.m(z0) > 8 else 6.0
        for level in np.arange(3.0, tall - 1.0, 3.2):
            for wz in np.arange(z0 + 1.0, z1 - 1.0, step):
                draw.polygon([pt(wz, level), pt(wz + 1.4, level), pt(wz + 1.4, level + 1.5), pt(wz, level + 1.5)],
                             fill=glass)
        if rng.random() < 0.15 * DECOR and z0 < 60:  # a red-and-white shop awning: a distractor
            for k, wz in enumerate(np.arange(z0 + 1, min(z1, z0 + 8), 0.7)):
                colour = obj.RED if k % 2 else obj.WHITE
                draw.polygon([pt(wz, 3.2), pt(wz + 0.7, 3.2), pt(wz + 0.7, 2.4, u - side * 1.2),
                              pt(wz, 2.4, u - side * 1.2)], fill=colour)


def _road(draw: ImageDraw.ImageDraw, cam: Camera, rng: np.random.Generator) -> None:
    """Asphalt, sidewalks and kerbs, shadows and patches, lane markings."""
    far, near = 2000.0, NEAR_Z_M * 0.8
    asphalt = obj.jitter(rng, (85, 87, 90), 20)
    draw.polygon(cam.quad(near, far, -ROAD_HALF_M, ROAD_HALF_M), fill=asphalt)
    pavement = obj.jitter(rng, (160, 158, 150), 15)
    painted_kerb = rng.random() < 0.1 * DECOR  # red-and-white kerb stones: a distractor
    for side in (-1, 1):
        draw.polygon(cam.quad(near, far, side * ROAD_HALF_M, side * (ROAD_HALF_M + 2.5)), fill=pavement)
        for k, z in enumerate(np.arange(near, 120, 1.0)):
            kerb = (obj.RED if k % 2 else obj.WHITE) if painted_kerb else (190, 190, 185)
            draw.polygon(cam.quad(z, z + 1.0, side * ROAD_HALF_M, side * (ROAD_HALF_M + 0.25)), fill=kerb)
    for _ in range(int(rng.integers(0, 5))):  # shadows and repaired patches: dark shapes that are not a dug hole
        z0 = float(rng.uniform(near, 60))
        u0 = float(rng.uniform(-ROAD_HALF_M, ROAD_HALF_M - 1))
        shade = tuple(int(c * rng.uniform(0.45, 0.8)) for c in asphalt)
        draw.polygon(cam.quad(z0, z0 + float(rng.uniform(1, 8)), u0, u0 + float(rng.uniform(1, 5))), fill=shade)
    paint = obj.WHITE if rng.random() < 0.75 else obj.YELLOW
    lanes = [0.0] if rng.random() < 0.7 else [-1.7, 1.7]
    phase = float(rng.uniform(0, 9))
    for u in lanes:
        for z in np.arange(near + phase, 300, 9.0):
            draw.polygon(cam.quad(z, z + 3.0, u - 0.08, u + 0.08), fill=paint)
    for side in (-1, 1):
        draw.polygon(cam.quad(near, far, side * (ROAD_HALF_M - 0.45), side * (ROAD_HALF_M - 0.3)), fill=obj.WHITE)


def _depth(rng: np.random.Generator, nearest: float = NEAR_Z_M * 1.1, farthest: float = 60.0) -> float:
    """A depth drawn uniformly in t (so near and far objects are equally likely on the picture)."""
    return NEAR_Z_M / rng.uniform(NEAR_Z_M / farthest, NEAR_Z_M / nearest)


def _roadwork(cam: Camera, rng: np.random.Generator, draw: ImageDraw.ImageDraw, kind: str) -> list[Sprite]:
    """One group of roadwork objects, as sprites (a dug patch draws its hole on the road at once)."""
    z = _depth(rng, farthest=CUE_FARTHEST_M)
    u = float(rng.uniform(-ROAD_HALF_M + 0.5, ROAD_HALF_M - 0.5))
    sprites: list[Sprite] = []

    def at(fn: Callable[..., None], z: float, u: float) -> None:
        x, y = cam.ground(z, u)
        sprites.append((z, lambda: fn(draw, x, y, cam.m(z), rng)))

    if kind == "closure":  # a lane closed by a taper of cones, drums or barriers across it
        fn = (obj.cone, obj.cone, obj.barrel, obj.barrier)[rng.integers(4)]
        count = int(rng.integers(5, 11))
        side = 1.0 if rng.random() < 0.5 else -1.0
        start, end = side * (ROAD_HALF_M - 0.6), side * float(rng.uniform(0.0, 2.0))
        spacing = float(rng.uniform(2.0, 4.0))
        for k in range(count):
            at(fn, z + k * spacing, start + (end - start) * min(1.0, k / max(1, count // 2)))
    elif kind in ("cones", "drums", "barriers"):
        fn = {"cones": obj.cone, "drums": obj.barrel, "barriers": obj.barrier}[kind]
        count = int(rng.integers(3, 8)) if kind != "barriers" else int(rng.integers(1, 4))
        spacing = float(rng.uniform(2.5, 5.0))
        drift = float(rng.uniform(-0.3, 0.3))
        for k in range(count):
            at(fn, z + k * spacing, u + k * drift)
    elif kind == "sign":
        x, y = cam.ground(z, float(np.sign(u) or 1) * float(rng.uniform(ROAD_HALF_M + 0.3, ROAD_HALF_M + 2.3)))
        sprites.append((z, lambda: obj.sign(draw, x, y, cam.m(z), rng, "roadwork")))
    elif kind == "excavator":
        at(obj.excavator, z + 3, float(np.clip(u, -3, 6)))
    elif kind == "workers":
        for k in range(int(rng.integers(1, 4))):
            x, y = cam.ground(z + rng.uniform(0, 3), u + k * rng.uniform(0.6, 1.2))
            mz = cam.m(z)
            sprites.append((z, partial(obj.person, draw, x, y, mz, rng, worker=True)))
    else:  # a dug patch: a dark hole in the asphalt, its heap, and often an orange net around it
        length, wide = float(rng.uniform(2, 6)), float(rng.uniform(1.2, 3.0))
        u = float(np.clip(u, -ROAD_HALF_M + 0.5, ROAD_HALF_M - wide))
        draw.polygon(cam.quad(z, z + length, u, u + wide), fill=obj.jitter(rng, (70, 50, 35), 12))
        hx, hy = cam.ground(z + length / 2, u + wide + 0.8)
        mz = cam.m(z + length / 2)

        def heap(hx: float = hx, hy: float = hy, mz: float = mz) -> None:
            draw.polygon([(hx - 1.2 * mz, hy), (hx - 0.3 * mz, hy - 0.9 * mz), (hx + 0.4 * mz, hy - 0.8 * mz),
                          (hx + 1.2 * mz, hy)], fill=obj.jitter(rng, (125, 95, 60), 15))

        sprites.append((z + length / 2, heap))
        if rng.random() < 0.6:
            net = [cam.ground(z - 0.5, u - 0.5), cam.ground(z - 0.5, u + wide + 0.5)]
            sprites.append((z - 0.5, lambda: obj.mesh_fence(draw, net, cam.m(z - 0.5))))
    return sprites


def _distractor(cam: Camera, rng: np.random.Generator, draw: ImageDraw.ImageDraw) -> Sprite:
    """Something with roadwork's colours or shapes that is not roadwork."""
    kind = rng.choice(["orange-car", "pedestrian", "bollard", "sign", "sign"])
    z = _depth(rng)
    side = 1 if rng.random() < 0.5 else -1
    if kind == "orange-car":
        x, y = cam.ground(z, float(rng.uniform(-3.5, 3.5)))
        colour = obj.jitter(rng, obj.ORANGE if rng.random() < 0.7 else obj.RED, 20)
        return z, lambda: obj.car(draw, x, y, cam.m(z), rng, colour)
    if kind == "pedestrian":
        x, y = cam.ground(z, side * float(rng.uniform(ROAD_HALF_M + 0.4, ROAD_HALF_M + 2.3)))
        return z, lambda: obj.person(draw, x, y, cam.m(z), rng)
    if kind == "bollard":
        u = side * float(rng.uniform(ROAD_HALF_M + 0.3, ROAD_HALF_M + 1.0))
        spots = [cam.ground(z + 1.5 * k, u) for k in range(int(rng.integers(1, 5)))]

        def bollards() -> None:
            for x, y in spots:
                obj.bollard(draw, x, y, cam.m(z), rng)

        return z, bollards
    x, y = cam.ground(z, side * float(rng.uniform(ROAD_HALF_M + 0.3, ROAD_HALF_M + 2.3)))
    return z, lambda: obj.sign(draw, x, y, cam.m(z), rng, str(rng.choice(obj.OTHER_SIGNS)))


def _street_life(cam: Camera, rng: np.random.Generator, draw: ImageDraw.ImageDraw) -> list[Sprite]:
    """Cars, poles, trees and people every street has."""
    sprites: list[Sprite] = []
    for _ in range(int(rng.integers(0, 6))):
        z = _depth(rng, farthest=120.0)
        x, y = cam.ground(z, float(rng.choice([-3.0, -1.2, 1.2, 3.0]) + rng.uniform(-0.4, 0.4)))
        colour = obj.jitter(rng, obj.CAR_COLOURS[rng.integers(len(obj.CAR_COLOURS))], 12)
        sprites.append((z, partial(obj.car, draw, x, y, cam.m(z), rng, colour)))
    makers: tuple[tuple[Callable[..., None], int], ...] = (
        (obj.pole, int(rng.integers(1, 6))), (obj.tree, int(rng.integers(0, 6))), (obj.person, int(rng.integers(0, 4))))
    for maker, count in makers:
        for _ in range(count):
            z = _depth(rng, farthest=100.0)
            side = 1 if rng.random() < 0.5 else -1
            x, y = cam.ground(z, side * float(rng.uniform(ROAD_HALF_M + 0.4, ROAD_HALF_M + 2.4)))
            sprites.append((z, partial(maker, draw, x, y, cam.m(z), rng)))
    return sprites


def street_scene(rng: np.random.Generator, label: int, size: Size = (1280, 720)) -> Image.Image:
    """One street of `size` (width, height); with roadwork when `label` is 1."""
    width, height = size
    light = str(rng.choice(list(LIGHTS), p=[0.45, 0.25, 0.18, 0.12]))
    horizon = height * float(rng.uniform(0.35, 0.55))
    near_half = width * float(rng.uniform(0.35, 0.8))  # road half width at the bottom row, pixels
    cam = Camera(width, height, horizon, width * float(rng.uniform(0.3, 0.7)), width * float(rng.uniform(0.35, 0.65)),
                 near_half / ROAD_HALF_M)
    top, bottom, _, _ = LIGHTS[light]
    image = _sky(size, int(horizon) + 1, obj.jitter(rng, top, 15), obj.jitter(rng, bottom, 15))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 14))):  # a hazy skyline
        left, w = float(rng.uniform(-0.1, 1.0)) * width, float(rng.uniform(0.03, 0.15)) * width
        tall = float(rng.uniform(0.02, 0.15)) * height
        draw.rectangle([left, horizon - tall, left + w, horizon + 1], fill=obj.jitter(rng, (150, 155, 165), 20))
    draw.rectangle([0, horizon, width, height], fill=obj.jitter(rng, (110, 120, 95), 20))
    _road(draw, cam, rng)
    for side in (-1, 1):
        if rng.random() < 0.8:
            _facades(draw, cam, rng, side)
    sprites = _street_life(cam, rng, draw)
    distractors = int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))
    distractors += int(rng.integers(0, EXTRA_DISTRACTORS + 1)) if not label else 0
    sprites += [_distractor(cam, rng, draw) for _ in range(distractors)]
    if label:
        groups = int(rng.choice(GROUPS))
        kinds = rng.choice(ROADWORK, size=groups, replace=False, p=ROADWORK_WEIGHTS / ROADWORK_WEIGHTS.sum())
        for kind in kinds:
            sprites += _roadwork(cam, rng, draw, str(kind))
    for _, paint in sorted(sprites, key=lambda s: -s[0]):
        paint()
    return _light(image, rng, light)


def _write_one(job: tuple[Path, int, int, tuple[Size, ...]]) -> int:
    out, seed, index, sizes = job
    rng = np.random.default_rng([seed, index])
    label = index % 2
    size = sizes[int(rng.integers(len(sizes)))]
    image = street_scene(rng, label, size)
    image.save(out / str(label) / f"s{seed}-{index:05d}.jpg", format="JPEG", quality=int(rng.integers(80, 96)))
    return label


def make_street_folder(out: Path, images: int, seed: int = 0, sizes: Sequence[Size] = FULL_SIZES,
                       workers: int = 1) -> dict[int, int]:
    """`images` JPEGs split evenly into out/0 and out/1 (labels alternate); names carry the seed (`s{seed}-`), so
    sets of two seeds never collide. Returns the count per label."""
    for label in (0, 1):
        (out / str(label)).mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, index, tuple(sizes)) for index in range(images)]
    counts = {0: 0, 1: 0}
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            labels = list(pool.map(_write_one, jobs, chunksize=16))
    else:
        labels = [_write_one(job) for job in jobs]
    for label in labels:
        counts[label] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write 0/ and 1/ into")
    parser.add_argument("--images", type=int, default=1000, help="how many images (half of each label)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-side", type=int, help="shrink every size (aspect kept) to this longest side")
    parser.add_argument("--small", action="store_true", help="sides of 240 px at most (--max-side 240), for tests")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing in parallel")
    args = parser.parse_args(argv)
    max_side = 240 if args.small else args.max_side
    if args.images < 2 or (max_side is not None and max_side < 64) or args.workers < 1:
        parser.error(f"--images must be at least 2, --max-side at least 64 and --workers at least 1, got "
                     f"{args.images}, {max_side} and {args.workers}")
    sizes = scaled_sizes(max_side) if max_side else FULL_SIZES
    started = time.monotonic()
    counts = make_street_folder(args.out, args.images, args.seed, sizes, args.workers)
    seconds = time.monotonic() - started
    print(f"wrote {args.images} images to {args.out} ({counts[0]} in 0/, {counts[1]} in 1/) in {seconds:.1f} s "
          f"({args.images / seconds:.1f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
