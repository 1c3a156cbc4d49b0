"""OWLv2 open-vocabulary detector on a tiny random model built here, loaded through the registry like a hub id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, Owlv2ForObjectDetection
from transformers.models.owlv2.modeling_owlv2 import Owlv2TextTransformer, Owlv2VisionTransformer

from cascade.experts.owlv2 import OWLv2Expert, image_score
from cascade.experts.preprocess import batch_tensor
from sn72_lab.tiny_models import build_tiny_owlv2
from tests.factories.experts import load_expert, make_images

SIZES = [(224, 224), (480, 640), (50, 900), (1080, 1920)]


@pytest.fixture(scope="module")
def tiny_owlv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_owlv2(tmp_path_factory.mktemp("owlv2") / "tiny-owlv2")


def make_expert(model: Path, device: str = "cpu", **overrides: Any) -> OWLv2Expert:
    return load_expert(OWLv2Expert, "owlv2", model, device, **{"name": "owl", "max_batch": 8, **overrides})


class TowerCalls:
    """Counts forward passes of OWLv2's text and vision towers, through torch's global forward hook."""

    def __init__(self) -> None:
        self.text = 0
        self.vision = 0

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(module, Owlv2TextTransformer):
            self.text += 1
        elif isinstance(module, Owlv2VisionTransformer):
            self.vision += 1


@pytest.fixture
def tower_calls() -> Iterator[TowerCalls]:
    calls = TowerCalls()
    handle = torch.nn.modules.module.register_module_forward_hook(calls)
    yield calls
    handle.remove()


@pytest.mark.parametrize("n", [1, 4])
def test_one_probability_per_image_for_batches_of_mixed_sizes(tiny_owlv2: Path, n: int) -> None:
    expert = make_expert(tiny_owlv2)
    images = make_images([SIZES[i % len(SIZES)] for i in range(n)], seed=n)
    out = expert.predict_batch(images)
    assert len(out) == n
    assert all(expert.options.floor <= p <= 1.0 for p in out)
    # rows are independent: each image scores the same alone as in the mixed batch
    assert out == pytest.approx([expert.predict_batch([image])[0] for image in images], abs=1e-5)
    assert expert.memory_bytes() > 0 and not expert.is_async
    assert expert.input_side() == 64 and expert.resize == "letterbox"  # the processor's size; OWLv2 pads


def test_queries_are_embedded_once_at_load(tiny_owlv2: Path, tower_calls: TowerCalls) -> None:
    expert = make_expert(tiny_owlv2)
    assert tower_calls.text == 1  # one pass over all five default queries
    assert expert.query_embeds.shape == (5, 32)
    assert torch.allclose(expert.query_embeds.norm(dim=-1), torch.ones(5), atol=1e-5)
    for n in (1, 3, 8):
        expert.predict_batch(make_images([SIZES[i % len(SIZES)] for i in range(n)]))
    assert tower_calls.text == 1 and tower_calls.vision == 3  # one vision pass per batch, never the text tower
    assert expert.model.owlv2.text_model is None  # released after the queries were embedded


def test_the_cached_query_path_matches_the_full_forward(tiny_owlv2: Path) -> None:
    """Scores and boxes from precomputed query embeddings equal those of `Owlv2ForObjectDetection.forward`."""
    expert = make_expert(tiny_owlv2)
    images = make_images(SIZES[:3], seed=7)
    pixels = batch_tensor(images, expert.size_hw, expert.mean, expert.std, "cpu", torch.float32, resize="letterbox")
    processor = AutoProcessor.from_pretrained(tiny_owlv2)
    reference = Owlv2ForObjectDetection.from_pretrained(tiny_owlv2).eval()
    queries = expert.options.queries
    text = processor.tokenizer(queries * len(images), padding="max_length", max_length=16, return_tensors="pt")
    with torch.inference_mode():
        full = reference(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
        scores, features = expert.patch_scores(pixels)
        index = torch.arange(scores.shape[1]).expand(len(images), -1)
        boxes = expert.patch_boxes(features, index)
    assert torch.allclose(scores, torch.sigmoid(full.logits.amax(dim=-1)), atol=1e-5)
    assert torch.allclose(boxes, full.pred_boxes, atol=1e-5)


def test_image_score_merges_overlapping_boxes_and_ignores_weak_ones() -> None:
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.6, 0.6, 0.9, 0.9], [0.0, 0.6, 0.2, 0.9]])
    scores = np.array([0.6, 0.5, 0.4, 0.05], dtype=np.float32)
    boxes = boxes.astype(np.float32)
    # NMS keeps 0.6 (drops the 0.5 on the same object); 0.05 is below conf: 1 - 0.4 * 0.6
    assert image_score(scores, boxes, conf=0.1, iou=0.5, top_k=3, floor=0.02) == pytest.approx(0.76, abs=1e-6)
    # without NMS both patches of the first object count: 1 - 0.4 * 0.5 * 0.6
    assert image_score(scores, boxes, conf=0.1, iou=1.0, top_k=3, floor=0.02) == pytest.approx(0.88, abs=1e-6)
    assert image_score(scores, boxes, conf=0.1, iou=0.5, top_k=1, floor=0.02) == pytest.approx(0.6, abs=1e-6)
    assert image_score(scores, boxes, conf=0.7, iou=0.5, top_k=3, floor=0.02) == pytest.approx(0.02)


def test_query_options_change_the_answer_and_are_checked(tiny_owlv2: Path) -> None:
    images = make_images(SIZES[:2], seed=2)
    default = make_expert(tiny_owlv2, options={"conf": 0.0})
    other = make_expert(tiny_owlv2, options={"conf": 0.0, "queries": ["a dog"]})
    assert other.query_embeds.shape[0] == 1
    assert default.predict_batch(images) != pytest.approx(other.predict_batch(images), abs=1e-6)
    nothing = make_expert(tiny_owlv2, options={"conf": 1.0, "floor": 0.03})
    assert nothing.predict_batch(images) == [0.03, 0.03]
    from pydantic import ValidationError

    from cascade.config import ExpertConfig

    with pytest.raises(ValidationError, match="queries repeat"):
        ExpertConfig(name="o", backend="owlv2", model="m", options={"queries": ["cone", "cone"]})
    with pytest.raises(ValidationError, match="queries"):
        ExpertConfig(name="o", backend="owlv2", model="m", options={"queries": []})


def test_another_input_size_interpolates_the_grid(tiny_owlv2: Path) -> None:
    expert = make_expert(tiny_owlv2, input_size=96, resize="squash")
    assert expert.interpolate and expert.box_bias.shape == (36, 4)  # a 6x6 grid of 16 px patches
    out = expert.predict_batch(make_images(SIZES[:2]))
    assert len(out) == 2 and all(0.0 <= p <= 1.0 for p in out)
    from cascade.experts.base import ExpertError

    with pytest.raises(ExpertError, match="not a multiple of the patch size"):
        make_expert(tiny_owlv2, input_size=100)


def test_a_folder_that_is_not_owlv2_is_a_clear_error(tmp_path: Path) -> None:
    from cascade.experts.base import ExpertError
    from sn72_lab.tiny_models import build_tiny_vit

    with pytest.raises(ExpertError, match="cannot load OWLv2"):
        make_expert(build_tiny_vit(tmp_path / "vit"))


@pytest.mark.gpu
def test_bf16_on_cuda_answers_as_fp32_on_the_cpu_does(tiny_owlv2: Path) -> None:
    cuda = make_expert(tiny_owlv2, device="cuda:0")
    assert cuda.dtype == torch.bfloat16 and cuda.query_embeds.is_cuda
    images = make_images(SIZES, seed=5)
    on_cpu = make_expert(tiny_owlv2, options={"conf": 0.0}).predict_batch(images)
    on_cuda = make_expert(tiny_owlv2, device="cuda:0", options={"conf": 0.0}).predict_batch(images)
    assert on_cuda == pytest.approx(on_cpu, abs=0.05)
    assert len(cuda.predict_batch(images[:1])) == 1


def test_the_engine_serves_owlv2_through_the_registry(tiny_owlv2: Path) -> None:
    """Real engine, real registry, micro-batched PNGs: each answer is what the expert says about the image."""
    from cascade.config import DecodeConfig, EngineConfig
    from cascade.decode import decode
    from cascade.engine import Engine
    from tests.factories.engine import cascade_config, expert_config, make_job, marked_payload

    config = expert_config("owl", backend="owlv2", model=str(tiny_owlv2), options={"conf": 0.0}, warmup_batches=1)
    engine = Engine(EngineConfig(cascade=cascade_config([[config]], margins=[0.5])))
    engine.start()
    try:
        payloads = [marked_payload(mark, seed=mark) for mark in range(6)]
        futures = [engine.submit(make_job(payload, budget_s=30.0)) for payload in payloads]
        results = [future.result(timeout=60) for future in futures]
    finally:
        engine.close()
    reference = make_expert(tiny_owlv2, options={"conf": 0.0})
    expected = reference.predict_batch([decode(payload, DecodeConfig()).image for payload in payloads])
    assert [r.answers[0].probability for r in results] == pytest.approx(expected, abs=1e-5)
    assert all(0.0 <= r.probability <= 1.0 for r in results)
