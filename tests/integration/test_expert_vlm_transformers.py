"""transformers VLM expert on a tiny Qwen2-VL built here, loaded from a local folder through the registry."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cascade.experts.base import ExpertError
from cascade.experts.vlm_common import to_pil_within
from cascade.experts.vlm_transformers import TransformersVLMExpert
from sn72_lab.tiny_models import BUILDERS
from tests.factories.experts import load_expert, make_images

SIZES = [(224, 224), (480, 640), (50, 900)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return BUILDERS["tiny-vlm"](tmp_path_factory.mktemp("vlm"))


def make_expert(model: Path, device: str = "cpu", **overrides: Any) -> TransformersVLMExpert:
    return load_expert(TransformersVLMExpert, "vlm_transformers", model, device, **{"name": "vlm", **overrides})


def test_one_probability_per_image_for_batches_of_mixed_sizes(model_dir: Path) -> None:
    expert = make_expert(model_dir)
    single = expert.predict_batch(make_images(SIZES[:1]))
    several = expert.predict_batch(make_images(SIZES))
    assert len(single) == 1 and len(several) == len(SIZES)
    assert all(0.0 <= p <= 1.0 for p in single + several)
    assert expert.memory_bytes() > 0
    assert expert.reader.missing == 0


def test_left_padding_keeps_each_row_independent(model_dir: Path) -> None:
    # the three sizes give prompts of different lengths (different image-token counts): padding must not leak
    expert = make_expert(model_dir)
    images = make_images(SIZES, seed=3)
    alone = [expert.predict_batch([image])[0] for image in images]
    together = expert.predict_batch(images)
    assert together == pytest.approx(alone, abs=1e-4)


def test_probability_is_the_yes_share_of_the_next_token_distribution(model_dir: Path) -> None:
    expert = make_expert(model_dir)
    image = make_images([(480, 640)], seed=5)[0]
    inputs = expert.processor(
        text=[expert.prompt], images=[to_pil_within(image, expert.options.max_pixels)], return_tensors="pt"
    )
    with torch.inference_mode():
        logits = expert.model(**inputs).logits[0, -1].float()
    probs = torch.softmax(logits, dim=-1)
    yes, no = probs[expert.yes_ids].sum().item(), probs[expert.no_ids].sum().item()
    assert expert.predict_batch([image])[0] == pytest.approx(yes / (yes + no), rel=1e-4)
    # the configured strings map to single tokens of this tokenizer, distinct on each side
    tokenizer = expert.processor.tokenizer
    assert {tokenizer.decode([i]) for i in expert.yes_ids} == {"Yes", "yes", " Yes", " yes"}
    assert not set(expert.yes_ids) & set(expert.no_ids)


def test_prompt_is_the_chat_template_ending_at_the_answer(model_dir: Path) -> None:
    expert = make_expert(model_dir, options={"question": "Roadwork here?"})
    assert "Roadwork here?" in expert.prompt
    assert expert.prompt.index("<|image_pad|>") < expert.prompt.index("Roadwork here?")
    assert expert.prompt.endswith("<|im_start|>assistant\n")


def test_images_are_scaled_down_to_max_pixels(model_dir: Path) -> None:
    expert = make_expert(model_dir, options={"max_pixels": 28 * 28 * 4})
    pil = to_pil_within(make_images([(480, 640)])[0], expert.options.max_pixels)
    assert pil.width * pil.height <= 28 * 28 * 4
    assert math.isclose(pil.width / pil.height, 640 / 480, rel_tol=0.05)
    assert all(0.0 <= p <= 1.0 for p in expert.predict_batch(make_images(SIZES)))


def test_yes_strings_that_are_not_single_tokens_are_an_error(model_dir: Path) -> None:
    with pytest.raises(ExpertError, match="single-token yes"):
        make_expert(model_dir, options={"yes_tokens": ["Absolutely, roadwork"]})


@pytest.mark.gpu
def test_bfloat16_on_cuda(model_dir: Path) -> None:
    expert = make_expert(model_dir, device="cuda:0", dtype="bfloat16")
    probabilities = expert.predict_batch(make_images(SIZES))
    assert len(probabilities) == len(SIZES) and all(0.0 <= p <= 1.0 for p in probabilities)
