"""Two eval fixes the trainer needed: a one-level cascade replays, and the resize mode is part of a model's
identity in the output cache (a changed `resize:` must not reuse the outputs of the old pixels)."""

from __future__ import annotations

import numpy as np

from cascade.config import ExpertConfig
from sn72_tools.evaluation import record, replay


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


def test_a_cascade_whose_images_all_leave_last_costs_exactly_every_level():
    # 24 images at a cost whose plain mean over 24 copies is one ulp above it (what failed CI on a measured cost)
    costs = np.array([0.0016, 0.003165674349975234])
    everyone_last = np.ones(24, dtype=int)
    assert replay.mean_cost(costs, everyone_last) == costs[-1]
    assert replay.mean_cost(costs, np.array([0, 0, 1, 1])) == (costs[0] + costs[1]) / 2


def test_mean_cost_never_exceeds_every_level_for_any_split():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        costs = np.cumsum(rng.uniform(1e-4, 1e-2, size=3))
        exits = rng.integers(0, 3, size=int(rng.integers(1, 60)))
        assert replay.mean_cost(costs, exits) <= costs[-1]
