"""The transformers image-classifier backend, loaded from a local folder like a hub id."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cascade.config import ExpertConfig
from cascade.experts.base import WORKER_STAGES, ExpertError
from cascade.experts.hf_classifier import roadwork_indices
from cascade.experts.registry import build_expert
from sn72_lab.tiny_models import build_tiny_vit


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    return build_tiny_vit(tmp_path_factory.mktemp("models") / "tiny-vit")


def mixed_images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    shapes = [(224, 224), (480, 640), (50, 900), (1080, 1920)]
    return [rng.integers(0, 256, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(n)]


def load(model, device="cpu", **options) -> object:
    expert = build_expert(ExpertConfig(name="vit", backend="hf_classifier", model=str(model), max_batch=8,
                                       device=device, options={"positive_labels": ["Roadwork"], **options}), device)
    expert.load()
    return expert


@pytest.mark.parametrize("n", [1, 5])
def test_one_probability_per_image_of_any_size(tiny_vit, n):
    expert = load(tiny_vit)
    out = expert.predict_batch(mixed_images(n))
    assert len(out) == n and all(0.0 <= p <= 1.0 for p in out)
    assert expert.memory_bytes() > 0


def test_a_batch_answers_as_its_images_do_alone(tiny_vit):
    expert = load(tiny_vit)
    images = mixed_images(4)
    together = expert.predict_batch(images)
    alone = [expert.predict_batch([image])[0] for image in images]
    assert together == pytest.approx(alone, abs=1e-5)


@pytest.mark.parametrize(("model", "words"), [
    ("/nowhere/tiny-vit", "local path /nowhere/tiny-vit does not exist"),
    ("not a model", "neither an existing path nor a hub id"),
])
def test_a_model_that_is_not_there_is_named_with_what_builds_it(model, words):
    expert = build_expert(ExpertConfig(name="vit", backend="hf_classifier", model=model), "cpu")
    with pytest.raises(ExpertError, match=f"expert vit: .*{words}.*sn72-make-tiny-models"):
        expert.load()


def test_a_saved_model_folder_without_its_config_is_refused_as_such(tmp_path):
    expert = build_expert(ExpertConfig(name="vit", backend="hf_classifier", model=str(tmp_path)), "cpu")
    with pytest.raises(ExpertError, match=r"has no config\.json"):
        expert.load()


def test_label_mapping_by_name_or_index():
    labels = {0: "None", 1: "Roadwork"}
    assert roadwork_indices(labels, ["roadwork"], []) == [1]
    assert roadwork_indices(labels, ["ignored"], [0]) == [0]
    with pytest.raises(ExpertError, match="none of the labels"):
        roadwork_indices(labels, ["cone"], [])
    with pytest.raises(ExpertError, match="positive_indices"):
        roadwork_indices(labels, [], [5])


def test_probability_is_the_softmax_mass_of_the_roadwork_label(tiny_vit):
    expert = load(tiny_vit)
    images = mixed_images(2)
    roadwork = expert.predict_batch(images)
    other = load(tiny_vit, positive_labels=["None"]).predict_batch(images)
    assert [a + b for a, b in zip(roadwork, other, strict=True)] == pytest.approx([1.0, 1.0], abs=1e-5)


def single_output_vit(folder):
    """The tiny ViT with one output named Roadwork: read through a sigmoid."""
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(folder, num_labels=1, id2label={0: "Roadwork"},
                                                      label2id={"Roadwork": 0}, ignore_mismatched_sizes=True)
    out = folder.parent / "tiny-vit-one-output"
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text((folder / "preprocessor_config.json").read_text())
    return out


def model_answers(expert, images, device="cpu"):
    """P(roadwork) from the model itself (transformers' forward on the expert's own pixels), not the expert's head."""
    from transformers import AutoModelForImageClassification

    from cascade.experts.preprocess import batch_tensor

    model = AutoModelForImageClassification.from_pretrained(expert.config.model).to(device).eval()
    pixels = batch_tensor(images, expert.size_hw, expert.mean, expert.std, device, torch.float32)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits.float()
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[:, 0]).tolist()
    return torch.softmax(logits, dim=-1)[:, 1].tolist()  # ROADWORK_LABELS: 1 is Roadwork


@pytest.mark.parametrize("outputs", ["two labels", "one output"])
def test_the_answer_is_the_models_own_probability_of_roadwork(tiny_vit, outputs):
    model = tiny_vit if outputs == "two labels" else single_output_vit(tiny_vit)
    expert = load(model)
    images = mixed_images(5)
    answers = expert.predict_batch(images)
    assert answers == pytest.approx(model_answers(expert, images), abs=1e-5)
    assert len(set(answers)) == 5  # distinct images, distinct answers: the head reads each row


class SlowDeviceAnswers:
    """A stand-in device's answers, still being computed: read back (`.cpu()`, `.tolist()`), they come once it is
    done (30 ms from now)."""

    is_cuda = False

    def __init__(self, values: list[float]) -> None:
        self.values, self.ready_at = values, time.perf_counter() + 0.03

    def cpu(self) -> SlowDeviceAnswers:
        time.sleep(max(0.0, self.ready_at - time.perf_counter()))
        return self

    def tolist(self) -> list[float]:
        return self.cpu().values


def test_the_wait_for_the_devices_answers_is_timed_as_its_own_stage(tiny_vit):
    """sn72_miner_worker_stage_seconds: a forward queued on a device returns at once and its answers are waited for
    when read back; that wait is the "wait" stage, apart from the host's stages."""
    expert = load(tiny_vit)
    expert.probabilities_of = lambda pixels: SlowDeviceAnswers([0.25] * pixels.shape[0])
    assert expert.predict_batch(mixed_images(2)) == [0.25, 0.25]
    assert set(expert.stages) == set(WORKER_STAGES) - {"unpack"}  # the worker times "unpack" itself
    assert 0.025 <= expert.stages["wait"] < 1.0 and expert.stages["forward"] < 0.025, expert.stages


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda:0", marks=pytest.mark.gpu)])
def test_each_batch_records_where_its_time_went(tiny_vit, device):
    """Set again at every batch: decode, preprocess, forward, wait, together no more than the whole call; on a GPU the
    forward's kernels are still queued when the answers are asked for (a wait)."""
    expert = load(tiny_vit, device=device, cuda_graphs=device != "cpu")
    assert expert.stages is None  # nothing answered yet
    for n in (1, 8):
        began = time.perf_counter()
        expert.predict_batch(mixed_images(n))
        whole = time.perf_counter() - began
        assert set(expert.stages) == {"decode", "preprocess", "forward", "wait"}
        assert sum(expert.stages.values()) <= whole and expert.stages["forward"] > 0, expert.stages
        if device != "cpu":
            assert expert.stages["wait"] > 0, expert.stages


@pytest.mark.gpu
@pytest.mark.parametrize("outputs", ["two labels", "one output"])
def test_the_graphed_head_answers_as_the_model_does(tiny_vit, outputs):
    model = tiny_vit if outputs == "two labels" else single_output_vit(tiny_vit)
    graphed = load(model, device="cuda:0", cuda_graphs=True)
    assert type(graphed.probabilities_of).__name__ == "GraphedForward"
    for n in (1, 3):
        images = mixed_images(n)
        assert graphed.predict_batch(images) == pytest.approx(model_answers(graphed, images, "cuda:0"), abs=2e-2)


@pytest.mark.gpu
def test_batches_started_one_after_another_answer_each_its_own_images(tiny_vit):
    # A worker starts the next batch before the last one's answers are read: both replay the same bucket's graph,
    # whose static output the second replay overwrites; the first batch's answers must already be its own.
    graphed = load(tiny_vit, device="cuda:0", cuda_graphs=True)
    first, second = mixed_images(3), mixed_images(4)[1:]  # three images each: the same bucket (4)
    expected_first, expected_second = graphed.predict_batch(first), graphed.predict_batch(second)
    assert expected_first != pytest.approx(expected_second, abs=1e-4)
    finish_first = graphed.start_batch(first)
    finish_second = graphed.start_batch(second)
    assert finish_second() == pytest.approx(expected_second, abs=1e-6)
    assert finish_first() == pytest.approx(expected_first, abs=1e-6)


@pytest.mark.gpu
def test_cuda_graphs_answer_as_the_eager_model_does(tiny_vit):
    graphed = load(tiny_vit, device="cuda:0", cuda_graphs=True)
    eager = load(tiny_vit, device="cuda:0", cuda_graphs=False)
    assert type(graphed.probabilities_of).__name__ == "GraphedForward"
    for n in (1, 3, 8, 11):  # 11 > max_batch: the eager fallback
        images = mixed_images(n)
        assert graphed.predict_batch(images) == pytest.approx(eager.predict_batch(images), abs=2e-2)
    assert torch.cuda.is_available()


@pytest.mark.gpu
def test_compiled_buckets_answer_as_the_eager_model_does(tiny_vit):
    compiled = load(tiny_vit, device="cuda:0", cuda_graphs=True, compile_max_batch=2)
    eager = load(tiny_vit, device="cuda:0", cuda_graphs=False)
    assert compiled.probabilities_of.compiled_buckets == [1, 2]  # larger buckets are captured from the eager forward
    for n in (1, 2, 3, 8):
        images = mixed_images(n)
        assert compiled.predict_batch(images) == pytest.approx(eager.predict_batch(images), abs=2e-2)


@pytest.mark.gpu
def test_a_forward_inductor_cannot_take_whole_keeps_the_eager_forward_in_every_bucket():
    from cascade.experts.cuda_graphs import GraphedForward

    layer = torch.nn.Linear(4, 2).to("cuda:0")

    def forward(x):
        torch._dynamo.graph_break()  # nothing in eager mode; fullgraph compilation refuses it
        return layer(x)

    with torch.inference_mode():
        graphed = GraphedForward(forward, (4,), 4, "cuda:0", torch.float32, compile_max_batch=4)
        assert graphed.compiled_buckets == [] and sorted(graphed.graphs) == [1, 2, 4]
        x = torch.randn(3, 4, device="cuda:0")
        assert torch.allclose(graphed(x), layer(x))
