"""Roadwork and no-roadwork prompts for SDXL, from templates, seeded, with the label readable from the prompt.

The validators write their prompts with a captioner and an LLM (BLIP-2 caption of a real frame of the chosen label,
rewritten by Llama 3.1 under a label-specific instruction: docs/synth.md). Neither runs here; these templates aim
at the same kind of sentence: "Photorealistic dashcam footage of <scene>, <time>, <weather>, <camera>", plus for
label 1 one or two roadwork objects at a realistic distance (the validators' later instruction asks for exactly
one element that does not dominate the frame). Label 0 prompts hold no roadwork word at all, so `label_of` can
read the label back from any prompt, and a template edit that leaks a cone into a clear road fails the tests.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

SCENES = (
    "a two-lane city street lined with shops",
    "a multi-lane urban avenue",
    "a suburban residential road with parked cars",
    "a rural country road between fields",
    "a motorway with light traffic",
    "a highway interchange",
    "a narrow old-town street",
    "an intersection with traffic lights",
    "a road through a forest",
    "a bridge over a river",
    "a ring road at the edge of town",
    "a street in an industrial area",
)
TIMES = ("at dawn", "in the morning", "at midday", "in the afternoon", "at dusk", "at night, street lights on")
WEATHER = ("in clear weather", "under an overcast sky", "in light rain with wet asphalt", "in fog",
           "after snowfall", "on dry roads")
CAMERAS = ("dashcam behind the windshield", "driver's-seat dashcam view", "car-mounted camera", "from a moving vehicle")
# What makes a scene roadwork: the validators' later list of single elements, widened to the objects of the
# subnet's dataset (cones, barriers, signs, machines, workers, closed lanes).
ROADWORK_OBJECTS = (
    "a single orange traffic cone",
    "orange traffic cones closing one lane",
    "red and white construction barriers",
    "a temporary roadwork sign",
    "a yellow excavator at the roadside",
    "a parked construction vehicle",
    "a road worker in a safety vest",
    "a lane closure with an arrow board",
    "freshly dug asphalt behind a fence",
    "a small barrier around an open manhole",
)
ROADWORK_LEADS = ("with roadwork ahead:", "at a roadwork zone:", "with road construction:")
CLEAR_LEADS = ("with no construction, normal traffic,", "with clear lanes and regular traffic,")
# Words only label-1 prompts may hold; `label_of` reads them. No template of label 0 contains one.
ROADWORK_WORDS = ("roadwork", "construction", "cone", "barrier", "excavator", "safety vest", "lane closure",
                  "arrow board", "dug asphalt", "manhole")
_CLEAR_MARK = "no construction"  # label 0 says what it lacks; `label_of` must not read it as roadwork

# The validators' negative prompts (natix/validator/synthetic/config.py at 5d0756b): t2i adds the anti-clutter
# terms and the blur terms that i2i lacks. Kept word for word: they are generation parameters to match.
_REALISM_NEGATIVE = (
    "cartoon, anime, painting, drawing, artistic, stylized, illustration, sketch, unrealistic, fake, artificial, "
    "3d render, cgi, video game, fantasy, sci-fi, aerial view, bird's eye view, satellite view, drone footage, "
    "helicopter view, top-down view, security camera, cctv, surveillance camera, indoor scene, interior, portrait, "
    "face, person close-up, selfie, vibrant colors, oversaturated, neon, glowing, night vision, thermal imaging, "
    "fisheye lens, wide angle distortion"
)
NEGATIVE_PROMPTS = {
    "t2i": "cluttered, overcrowded, hundreds of cones, wall of traffic cones, excessive machinery, messy construction "
           "site, crowded road, over-populated, surreal amount of equipment, " + _REALISM_NEGATIVE
           + ", motion blur, blurry, out of focus, unfocused, soft focus, speed blur, camera shake, movement blur",
    "i2i": _REALISM_NEGATIVE,
}


@dataclass(frozen=True)
class Prompt:
    text: str
    negative: str
    label: int
    objects: tuple[str, ...]  # the roadwork objects named (empty for label 0)


def job_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image `index` of a run seeded `seed`: independent of the count, the batch and the order."""
    digest = hashlib.blake2b(f"sn72-synth/{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def build_prompt(label: int, rng: random.Random, mode: str = "t2i") -> Prompt:
    """One prompt of `label` (1: roadwork objects named, 0: none), drawn from `rng`."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    if mode not in NEGATIVE_PROMPTS:
        raise ValueError(f"mode must be one of {sorted(NEGATIVE_PROMPTS)}, got {mode!r}")
    scene, time, weather, camera = (rng.choice(options) for options in (SCENES, TIMES, WEATHER, CAMERAS))
    objects: tuple[str, ...] = ()
    if label:
        # NOTE: one object most of the time, two at most: the validators moved to exactly one element so that
        # their roadwork images are not cone walls; a classifier trained only on cluttered sites misses those.
        objects = tuple(rng.sample(ROADWORK_OBJECTS, 1 if rng.random() < 0.7 else 2))
        middle = f"{rng.choice(ROADWORK_LEADS)} {' and '.join(objects)} at a realistic distance,"
    else:
        middle = rng.choice(CLEAR_LEADS)
    text = f"Photorealistic dashcam footage of {scene} {middle} {time}, {weather}, {camera}."
    return Prompt(text, NEGATIVE_PROMPTS[mode], label, objects)


def label_of(text: str) -> int:
    """The label a prompt of `build_prompt` describes: 1 when it names a roadwork object."""
    lowered = text.lower().replace(_CLEAR_MARK, "")
    return int(any(word in lowered for word in ROADWORK_WORDS))
