"""Two eval fixes the trainer needed: a one-level cascade replays, and the resize mode is part of a model's
identity in the output cache (a changed `resize:` must not reuse the outputs of the old pixels)."""

from __future__ import annotations

import numpy as np

from cascade.config import ExpertConfig
from cascade.evaluation import record, replay


def test_every_image_leaves_a_one_level_cascade_at_its_only_level():
    probabilities = np.array([[0.1], [0.5], [0.97]])
    exits = replay.exit_levels([0.3], probabilities)
    assert exits.tolist() == [0, 0, 0]
    assert replay.answers_at(probabilities, exits).tolist() == [0.1, 0.5, 0.97]


def test_the_resize_mode_is_part_of_the_model_identity():
    def identity(**fields: object) -> str:
        return record.model_identity(ExpertConfig(name="vit", backend="hf_classifier", model="org/never-cached",
                                                  device="cpu", **fields))

    assert identity() == identity()
    modes = [identity(resize=mode) for mode in ("squash", "letterbox", "center_crop")]
    assert len({identity(), *modes}) == 4
