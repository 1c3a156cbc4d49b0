"""Zero-shot image-text expert on tiny CLIP / SigLIP / SigLIP2 models built here, loaded through the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cascade.experts.zero_shot import ZeroShotExpert, prompt_probabilities
from sn72_lab.tiny_models import BUILDERS
from tests.factories.experts import load_expert, make_images

FAMILIES = ["tiny-clip", "tiny-siglip", "tiny-siglip2"]
SIZES = [(224, 224), (480, 640), (50, 900)]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zero-shot")
    return {name: BUILDERS[name](root / name) for name in FAMILIES}


def make_expert(model: Path, device: str = "cpu", **overrides: Any) -> ZeroShotExpert:
    return load_expert(ZeroShotExpert, "zero_shot", model, device, **{"name": "zs", **overrides})


@pytest.mark.parametrize("family", FAMILIES)
def test_one_probability_per_image_for_batches_of_mixed_sizes(model_dirs: dict[str, Path], family: str) -> None:
    expert = make_expert(model_dirs[family])
    single = expert.predict_batch(make_images(SIZES[:1]))
    several = expert.predict_batch(make_images(SIZES))
    assert len(single) == 1 and len(several) == len(SIZES)
    assert all(0.0 <= p <= 1.0 for p in single + several)
    # rows are independent: the first image scores the same alone and in a batch
    assert single[0] == pytest.approx(several[0], abs=1e-5)
    assert expert.memory_bytes() > 0
    assert not expert.is_async


@pytest.mark.parametrize("family", FAMILIES)
def test_swapping_the_prompt_sides_gives_the_complement(model_dirs: dict[str, Path], family: str) -> None:
    images = make_images(SIZES, seed=1)
    plain = make_expert(model_dirs[family])
    options = plain.config.options
    swapped = make_expert(
        model_dirs[family],
        options={"positive_prompts": options["negative_prompts"], "negative_prompts": options["positive_prompts"]},
    )
    for p, q in zip(plain.predict_batch(images), swapped.predict_batch(images), strict=True):
        assert p + q == pytest.approx(1.0, abs=1e-5)


def test_text_embeddings_are_computed_once_at_load(
    model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    expert = make_expert(model_dirs["tiny-clip"])
    assert expert.text_embeds.shape[0] == 4  # two positive and two negative default prompts
    assert torch.allclose(expert.text_embeds.norm(dim=-1), torch.ones(4), atol=1e-5)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("text tower run at predict time")

    monkeypatch.setattr(expert.model, "get_text_features", fail)
    assert len(expert.predict_batch(make_images(SIZES))) == len(SIZES)


def test_siglip_logit_bias_is_used_and_cancels_in_the_softmax(model_dirs: dict[str, Path]) -> None:
    expert = make_expert(model_dirs["tiny-siglip"])
    assert expert.logit_bias is not None
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    shifted = logits + 7.0
    assert torch.allclose(prompt_probabilities(logits, 2), prompt_probabilities(shifted, 2))
    expected = (np.exp(2.0) + np.exp(-1.0)) / np.exp([2.0, -1.0, 0.5, 0.0]).sum()
    assert prompt_probabilities(logits, 2).item() == pytest.approx(expected, rel=1e-6)


def test_siglip2_naflex_keeps_aspect_within_the_patch_budget(model_dirs: dict[str, Path]) -> None:
    expert = make_expert(model_dirs["tiny-siglip2"])
    assert expert.naflex
    inputs = expert._naflex_inputs(make_images(SIZES))
    assert inputs["pixel_values"].shape[:2] == (3, expert.max_num_patches)
    for (h, w), (grid_h, grid_w), mask in zip(
        SIZES, inputs["spatial_shapes"].tolist(), inputs["pixel_attention_mask"], strict=True
    ):
        assert grid_h * grid_w <= expert.max_num_patches
        assert int(mask.sum()) == grid_h * grid_w
        assert (grid_w >= grid_h) == (w >= h)  # wide images get wide grids
    fixed = make_expert(model_dirs["tiny-siglip2"], input_size=32)
    assert fixed._naflex_inputs(make_images(SIZES))["spatial_shapes"].tolist() == [[4, 4]] * 3
    assert all(0.0 <= p <= 1.0 for p in fixed.predict_batch(make_images(SIZES)))


@pytest.mark.parametrize("family", ["tiny-clip", "tiny-siglip"])
def test_another_input_size_interpolates_position_embeddings(model_dirs: dict[str, Path], family: str) -> None:
    expert = make_expert(model_dirs[family], input_size=48)
    assert expert.size_hw == (48, 48) and expert.interpolate
    probabilities = expert.predict_batch(make_images(SIZES))
    assert len(probabilities) == len(SIZES) and all(0.0 <= p <= 1.0 for p in probabilities)
    assert not make_expert(model_dirs[family]).interpolate  # the trained size needs nothing


@pytest.mark.gpu
def test_bfloat16_on_cuda(model_dirs: dict[str, Path]) -> None:
    expert = make_expert(model_dirs["tiny-clip"], device="cuda:0", dtype="bfloat16")
    probabilities = expert.predict_batch(make_images(SIZES))
    assert len(probabilities) == len(SIZES) and all(0.0 <= p <= 1.0 for p in probabilities)
    assert expert.memory_bytes() > 0
