"""The things a generated street holds, drawn front-on at a ground point: cars, people, poles, signs, roadwork.

Each drawer takes the ground point (x, y) in pixels where the object stands and `m`, pixels per metre at that
depth, so an object has its real size wherever the scene puts it (a cone is 0.75 m tall, a car 1.45 m). The
scene (sn72_tools/training/streets.py) sorts them far to near. Colours are RGB tuples; the scene's light is applied
to the whole picture afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from PIL import ImageDraw

Colour = tuple[int, int, int]
ORANGE: Colour = (240, 100, 20)
WHITE: Colour = (235, 235, 230)
RED: Colour = (200, 30, 30)
BLACK: Colour = (25, 25, 28)
YELLOW: Colour = (235, 190, 30)
LIME: Colour = (190, 225, 40)
CAR_COLOURS: tuple[Colour, ...] = ((230, 230, 228), (170, 172, 176), (95, 98, 104), (30, 30, 34), (35, 55, 120),
                                   (160, 25, 30), (120, 20, 25), (70, 95, 70), (210, 170, 40))
SKIN: tuple[Colour, ...] = ((235, 195, 160), (200, 150, 110), (140, 95, 65), (90, 60, 40))


def _box(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, left: float, bottom: float, right: float,
         top: float, fill: Colour) -> None:
    """A rectangle in metres around the ground point (x right, heights up)."""
    draw.rectangle([x + left * m, y - top * m, x + right * m, y - bottom * m], fill=fill)


def jitter(rng: np.random.Generator, colour: Colour, spread: int = 18) -> Colour:
    """`colour` lighter or darker by up to `spread`, each channel nudged by a quarter of that (greys stay grey)."""
    shift = int(rng.integers(-spread, spread + 1))
    r, g, b = (int(np.clip(c + shift + rng.integers(-(spread // 4), spread // 4 + 1), 0, 255)) for c in colour)
    return (r, g, b)


def car(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, rng: np.random.Generator, colour: Colour) -> None:
    """A car or a van seen from behind (body, cabin, rear window, wheels, lights, plate)."""
    van = rng.random() < 0.25
    half, roof = (1.05, 2.4) if van else (0.9, 1.45)
    _box(draw, x, y, m, -half + 0.08, 0.0, -half + 0.42, 0.4, BLACK)
    _box(draw, x, y, m, half - 0.42, 0.0, half - 0.08, 0.4, BLACK)
    _box(draw, x, y, m, -half, 0.25, half, roof * 0.62, colour)
    _box(draw, x, y, m, -half + 0.15, roof * 0.6, half - 0.15, roof, colour)
    glass = (40, 50, 60) if rng.random() < 0.7 else (110, 130, 150)
    _box(draw, x, y, m, -half + 0.25, roof * 0.66, half - 0.25, roof - 0.08, glass)
    for side in (-1, 1):
        _box(draw, x, y, m, side * half - (0.22 if side > 0 else 0), 0.65, side * half + (0.22 if side < 0 else 0),
             0.85, (210, 20, 20))
    _box(draw, x, y, m, -0.26, 0.4, 0.26, 0.52, WHITE if rng.random() < 0.7 else YELLOW)


def person(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, rng: np.random.Generator,
           worker: bool = False) -> None:
    """A pedestrian (any clothes, orange too) or a worker: hi-vis vest with reflective bands and a helmet."""
    height = float(rng.uniform(1.6, 1.9))
    legs = jitter(rng, (40, 45, 70) if rng.random() < 0.6 else (90, 80, 70))
    _box(draw, x, y, m, -0.2, 0.0, -0.03, height * 0.47, legs)
    _box(draw, x, y, m, 0.03, 0.0, 0.2, height * 0.47, legs)
    if worker:
        top = ORANGE if rng.random() < 0.6 else LIME
    else:
        top = tuple(int(c) for c in rng.integers(20, 240, 3)) if rng.random() < 0.7 else ORANGE  # type: ignore[assignment]
    _box(draw, x, y, m, -0.24, height * 0.45, 0.24, height * 0.82, jitter(rng, top))
    if worker:
        for level in (0.55, 0.68):
            _box(draw, x, y, m, -0.24, height * level, 0.24, height * level + 0.05, (225, 225, 215))
    head = height * 0.82
    draw.ellipse([x - 0.12 * m, y - (head + 0.24) * m, x + 0.12 * m, y - head * m], fill=SKIN[rng.integers(4)])
    if worker:
        hat = (WHITE, YELLOW, ORANGE)[rng.integers(3)]
        draw.pieslice([x - 0.15 * m, y - (head + 0.3) * m, x + 0.15 * m, y - (head + 0.1) * m], 180, 360, fill=hat)


def pole(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, rng: np.random.Generator) -> None:
    """A street lamp, a traffic light or a wooden utility pole."""
    kind = rng.integers(3)
    if kind == 0:
        height = float(rng.uniform(6, 9))
        _box(draw, x, y, m, -0.08, 0, 0.08, height, (110, 112, 118))
        reach = float(rng.choice([-1.6, 1.6]))
        _box(draw, x, y, m, min(0.0, reach), height - 0.1, max(0.0, reach), height, (110, 112, 118))
        _box(draw, x, y, m, reach - 0.3, height - 0.25, reach + 0.3, height - 0.08, (225, 225, 200))
    elif kind == 1:
        _box(draw, x, y, m, -0.07, 0, 0.07, 3.0, (60, 62, 66))
        _box(draw, x, y, m, -0.2, 3.0, 0.2, 4.0, BLACK)
        lit = rng.integers(3)
        for i, colour in enumerate(((220, 30, 30), (240, 160, 20), (40, 200, 80))):
            shade = colour if i == lit else tuple(c // 4 for c in colour)
            cy = y - (3.85 - 0.3 * i) * m
            draw.ellipse([x - 0.12 * m, cy - 0.12 * m, x + 0.12 * m, cy + 0.12 * m], fill=shade)  # type: ignore[arg-type]
    else:
        height = float(rng.uniform(7, 10))
        _box(draw, x, y, m, -0.12, 0, 0.12, height, (95, 70, 45))
        _box(draw, x, y, m, -0.9, height - 0.7, 0.9, height - 0.55, (95, 70, 45))


def tree(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, rng: np.random.Generator) -> None:
    height = float(rng.uniform(4, 9))
    _box(draw, x, y, m, -0.15, 0, 0.15, height * 0.5, (80, 60, 40))
    green = jitter(rng, (50, 95, 45), 25)
    for _ in range(3):
        cx, cy = x + rng.uniform(-1, 1) * m, y - height * rng.uniform(0.6, 0.85) * m
        r = height * rng.uniform(0.2, 0.32) * m
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter(rng, green, 12))


def _plate(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, height: float) -> tuple[float, float, float]:
    """The sign's pole; returns the plate's centre and half size in pixels."""
    _box(draw, x, y, m, -0.04, 0, 0.04, height, (130, 132, 136))
    return x, y - height * m, 0.45 * m


def _triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, edge: Colour, face: Colour) -> None:
    draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=edge)
    draw.polygon([(cx, cy - 0.55 * r), (cx + 0.6 * r, cy + 0.55 * r), (cx - 0.6 * r, cy + 0.55 * r)], fill=face)


def _diamond(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, face: Colour) -> None:
    draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=BLACK)
    draw.polygon([(cx, cy - 0.88 * r), (cx + 0.88 * r, cy), (cx, cy + 0.88 * r), (cx - 0.88 * r, cy)], fill=face)


def _digger_glyph(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    """The roadwork pictogram: a figure digging beside a heap."""
    w = max(1, int(r * 0.1))
    draw.ellipse([cx - 0.12 * r, cy - 0.3 * r, cx + 0.04 * r, cy - 0.14 * r], fill=BLACK)
    draw.line([(cx - 0.05 * r, cy - 0.12 * r), (cx + 0.08 * r, cy + 0.2 * r)], fill=BLACK, width=w)
    draw.line([(cx - 0.25 * r, cy + 0.05 * r), (cx + 0.05 * r, cy - 0.02 * r)], fill=BLACK, width=w)
    draw.polygon([(cx + 0.1 * r, cy + 0.35 * r), (cx + 0.3 * r, cy + 0.15 * r), (cx + 0.45 * r, cy + 0.35 * r)],
                 fill=BLACK)


def sign(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, rng: np.random.Generator, kind: str) -> None:
    """`roadwork` (red-bordered triangle or orange diamond with the digger), or a sign of another kind."""
    cx, cy, r = _plate(draw, x, y, m, float(rng.uniform(2.0, 2.6)))
    if kind == "roadwork":
        if rng.random() < 0.5:
            _triangle(draw, cx, cy, r, RED, WHITE)
        else:
            _diamond(draw, cx, cy, r, ORANGE)
        _digger_glyph(draw, cx, cy + 0.1 * r, r)
    elif kind == "warning":  # the same triangle or a yellow diamond, with an exclamation mark or an arrow
        if rng.random() < 0.6:
            _triangle(draw, cx, cy, r, RED, WHITE)
        else:
            _diamond(draw, cx, cy, r, YELLOW)
        if rng.random() < 0.5:
            draw.rectangle([cx - 0.05 * r, cy - 0.25 * r, cx + 0.05 * r, cy + 0.15 * r], fill=BLACK)
            draw.rectangle([cx - 0.05 * r, cy + 0.25 * r, cx + 0.05 * r, cy + 0.35 * r], fill=BLACK)
        else:
            draw.arc([cx - 0.25 * r, cy - 0.2 * r, cx + 0.25 * r, cy + 0.3 * r], 180, 360, fill=BLACK,
                     width=max(1, int(0.1 * r)))
    elif kind == "stop":
        angles = np.deg2rad(np.arange(8) * 45 + 22.5)
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles], fill=RED)
        draw.rectangle([cx - 0.6 * r, cy - 0.12 * r, cx + 0.6 * r, cy + 0.12 * r], fill=WHITE)
    elif kind == "no-entry":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=RED)
        draw.rectangle([cx - 0.65 * r, cy - 0.15 * r, cx + 0.65 * r, cy + 0.15 * r], fill=WHITE)
    elif kind == "limit":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=RED)
        draw.ellipse([cx - 0.78 * r, cy - 0.78 * r, cx + 0.78 * r, cy + 0.78 * r], fill=WHITE)
        for dx in (-0.3, 0.1):
            draw.rectangle([cx + dx * r, cy - 0.35 * r, cx + (dx + 0.2) * r, cy + 0.35 * r], fill=BLACK)
    elif kind == "parking":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=(30, 80, 170))
        draw.rectangle([cx - 0.3 * r, cy - 0.6 * r, cx - 0.1 * r, cy + 0.6 * r], fill=WHITE)
        draw.ellipse([cx - 0.3 * r, cy - 0.6 * r, cx + 0.35 * r, cy + 0.1 * r], outline=WHITE,
                     width=max(1, int(0.15 * r)))
    else:  # a green direction board
        draw.rectangle([cx - 1.6 * r, cy - 0.6 * r, cx + 1.6 * r, cy + 0.6 * r], fill=(20, 110, 60))
        draw.rectangle([cx - 1.2 * r, cy - 0.1 * r, cx + 0.8 * r, cy + 0.1 * r], fill=WHITE)


OTHER_SIGNS = ("warning", "warning", "stop", "no-entry", "limit", "parking", "direction")


def cone(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, rng: np.random.Generator) -> None:
    """A traffic cone: orange, two white bands, a square foot."""
    body = jitter(rng, ORANGE, 15) if rng.random() < 0.85 else jitter(rng, RED, 15)
    _box(draw, x, y, m, -0.24, 0, 0.24, 0.05, jitter(rng, (40, 40, 40)))
    draw.polygon([(x - 0.18 * m, y - 0.05 * m), (x + 0.18 * m, y - 0.05 * m), (x + 0.03 * m, y - 0.75 * m),
                  (x - 0.03 * m, y - 0.75 * m)], fill=body)
    for low, high in ((0.3, 0.42), (0.52, 0.6)):
        wl, wh = 0.18 - 0.15 * low / 0.7, 0.18 - 0.15 * high / 0.7
        draw.polygon([(x - wl * m, y - low * m), (x + wl * m, y - low * m), (x + wh * m, y - high * m),
                      (x - wh * m, y - high * m)], fill=WHITE)


def barrel(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, rng: np.random.Generator) -> None:
    """A channelising drum: an orange cylinder with white reflective bands."""
    _box(draw, x, y, m, -0.3, 0, 0.3, 1.0, jitter(rng, ORANGE, 15))
    for low in (0.25, 0.6):
        _box(draw, x, y, m, -0.3, low, 0.3, low + 0.14, WHITE)


def barrier(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, rng: np.random.Generator) -> None:
    """An A-frame barrier: two legs and a board of diagonal red (or orange) and white stripes, sometimes a lamp."""
    width = float(rng.uniform(1.2, 2.0))
    stripe = ORANGE if rng.random() < 0.4 else RED
    for side in (-1, 1):
        _box(draw, x, y, m, side * width / 2 - 0.05, 0, side * width / 2 + 0.05, 1.0, (200, 200, 200))
    top, bottom = y - 1.0 * m, y - 0.7 * m
    left, right = x - width / 2 * m, x + width / 2 * m
    draw.rectangle([left, top, right, bottom], fill=WHITE)
    step = max(2.0, 0.25 * m)
    start = left - (bottom - top)
    for k in range(int((right - start) / step) + 1):
        if k % 2:
            continue
        x0 = start + k * step
        pts = [(x0, bottom), (x0 + step, bottom), (x0 + step + (bottom - top), top), (x0 + (bottom - top), top)]
        draw.polygon([(min(max(px, left), right), py) for px, py in pts], fill=stripe)
    if rng.random() < 0.4:
        draw.ellipse([x - 0.1 * m, top - 0.22 * m, x + 0.1 * m, top - 0.02 * m], fill=(250, 200, 40))


def bollard(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, rng: np.random.Generator) -> None:
    """A red-and-white post (a distractor: the colours of a barrier, not roadwork)."""
    height = float(rng.uniform(0.8, 1.3))
    for k in range(5):
        _box(draw, x, y, m, -0.07, height * k / 5, 0.07, height * (k + 1) / 5, RED if k % 2 else WHITE)


def excavator(draw: ImageDraw.ImageDraw, x: float, y: float, m: float, rng: np.random.Generator) -> None:
    """Tracks, a yellow or orange body and cab, a boom and a bucket, facing either way."""
    facing = 1 if rng.random() < 0.5 else -1
    body = jitter(rng, YELLOW if rng.random() < 0.6 else ORANGE, 15)
    draw.rounded_rectangle([x - 2.0 * m, y - 0.9 * m, x + 2.0 * m, y], radius=0.4 * m, fill=BLACK)
    _box(draw, x, y, m, -1.7, 0.9, 1.7, 2.1, body)
    cab_l = -1.5 if facing > 0 else 0.2
    _box(draw, x, y, m, cab_l, 2.1, cab_l + 1.3, 3.6, body)
    _box(draw, x, y, m, cab_l + 0.15, 2.4, cab_l + 1.15, 3.4, (60, 75, 90))
    root = (x + facing * 0.6 * m, y - 2.2 * m)
    elbow = (x + facing * 3.2 * m, y - 4.2 * m)
    tip = (x + facing * 4.2 * m, y - 1.0 * m)
    width = max(1, int(0.35 * m))
    draw.line([root, elbow], fill=body, width=width)
    draw.line([elbow, tip], fill=body, width=max(1, int(0.25 * m)))
    draw.polygon([tip, (tip[0] + facing * 0.8 * m, tip[1] + 0.2 * m), (tip[0] + facing * 0.3 * m, tip[1] + 0.9 * m),
                  (tip[0] - facing * 0.3 * m, tip[1] + 0.6 * m)], fill=(60, 60, 60))


def mesh_fence(draw: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]], m: float) -> None:
    """An orange safety net along ground points: posts, a top and bottom line, a hatch between."""
    width = max(1, int(0.06 * m))
    tops = [(px, py - 1.0 * m) for px, py in points]
    draw.line(list(points), fill=ORANGE, width=width)
    draw.line(tops, fill=ORANGE, width=width)
    for (bx, by), (tx, ty) in zip(points, tops, strict=True):
        draw.line([(bx, by), (tx, ty)], fill=(200, 200, 200), width=width)
    for (ax, ay), (bx, _) in itertools.pairwise(points):
        for f in np.linspace(0, 1, 5):
            draw.line([(ax + f * (bx - ax), ay), (ax + f * (bx - ax), ay - m)], fill=ORANGE, width=max(1, width // 2))
