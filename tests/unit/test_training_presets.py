"""The presets' parts without training: focal loss with label smoothing against a hand computation (and through the
Trainer subclass), preset resolution, the validators' regimes, and the synthetic share of an epoch (honoured, drawn
afresh each epoch, never in the dev or fit roles)."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sn72_tools.training import cli, data, mix
from sn72_tools.training.losses import SAMPLE_WEIGHT, RecipeTrainer, focal_smoothed_loss
from sn72_tools.training.model import Geometry, PixelSet, StartingModel, make_loss
from sn72_tools.training.recipe import ENSEMBLES, PRESETS, REGIME_DISTORTIONS, Recipe, TrainError, build_recipe

# --- the loss --------------------------------------------------------------------------------------------------------


def _by_hand(logits: list[list[float]], labels: list[int], gamma: float, eps: float, w: list[float]) -> float:
    total = 0.0
    for row, y in zip(logits, labels, strict=True):
        z = [math.exp(v) for v in row]
        p = [v / sum(z) for v in z]
        k = len(row)
        for c in range(k):
            q = (1 - eps) * (c == y) + eps / k
            total += -w[c] * q * (1 - p[c]) ** gamma * math.log(p[c])
    return total


@pytest.mark.parametrize(("gamma", "eps", "w"), [(2.0, 0.1, [1.0, 1.0]), (2.0, 0.0, [1.0, 1.0]),
                                                 (0.5, 0.05, [0.7, 1.9]), (0.0, 0.1, [1.0, 3.0])])
def test_focal_loss_with_smoothing_is_the_hand_computation(gamma, eps, w):
    logits = [[2.0, -1.0], [0.3, 0.4], [-2.5, 1.5], [0.0, 0.0]]
    labels = [0, 1, 0, 1]
    got = focal_smoothed_loss(torch.tensor(logits), torch.tensor(labels), gamma=gamma, smoothing=eps,
                              weight=torch.tensor(w))
    assert got.item() == pytest.approx(_by_hand(logits, labels, gamma, eps, w), rel=1e-6)


def test_focal_down_weights_the_easy_images_and_gamma_zero_is_the_old_cross_entropy():
    logits = torch.tensor([[4.0, -4.0], [0.1, -0.1]])  # an easy, confident image and a hard one, both class 0
    labels = torch.tensor([0, 0])
    ce = focal_smoothed_loss(logits, labels, reduction="none")
    focal = focal_smoothed_loss(logits, labels, gamma=2.0, reduction="none")
    assert (focal[0] / ce[0]).item() < 1e-6 < (focal[1] / ce[1]).item() < 0.3  # the easy one nearly vanishes
    weights = torch.tensor([0.6, 2.5])
    for smoothing in (0.0, 0.05):
        torch_ce = F.cross_entropy(logits, labels, weight=weights, label_smoothing=smoothing, reduction="sum")
        ours = focal_smoothed_loss(logits, labels, smoothing=smoothing, weight=weights)
        old = make_loss(weights, smoothing)({"logits": logits}, labels, num_items_in_batch=2) * 2
        assert ours.item() == pytest.approx(torch_ce.item(), rel=1e-6) == old.item()


def test_bad_loss_parameters_are_refused():
    with pytest.raises(ValueError, match="gamma"):
        focal_smoothed_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), gamma=-1.0)


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 2)

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(pixel_values)}


def test_the_trainer_subclass_computes_the_recipe_loss_per_image_of_the_step(tmp_path):
    from transformers import TrainingArguments

    torch.manual_seed(0)
    model = _Linear()
    trainer = RecipeTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                report_to="none"),
                            focal_gamma=2.0, label_smoothing=0.1, class_weights=torch.tensor([1.0, 2.0]))
    pixels, labels = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    logits = model(pixels)["logits"]
    expected = focal_smoothed_loss(logits, labels, gamma=2.0, smoothing=0.1, weight=torch.tensor([1.0, 2.0]))
    inputs = {"pixel_values": pixels, "labels": labels}
    assert trainer.compute_loss(model, inputs).item() == pytest.approx(expected.item() / 4, rel=1e-6)
    assert trainer.compute_loss(model, inputs, num_items_in_batch=8).item() == pytest.approx(expected.item() / 8)
    _, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
    assert torch.equal(outputs["logits"], logits)
    weighted = {**inputs, SAMPLE_WEIGHT: torch.tensor([1.0, 0.0, 0.0, 0.0])}  # only the first image counts
    first = focal_smoothed_loss(logits[:1], labels[:1], gamma=2.0, smoothing=0.1, weight=torch.tensor([1.0, 2.0]))
    assert trainer.compute_loss(model, weighted).item() == pytest.approx(first.item() / 4, rel=1e-6)
    assert "labels" in inputs  # the caller's batch is left as it was


# --- presets and regimes ---------------------------------------------------------------------------------------------


def test_presets_resolve_to_their_recipes_and_explicit_flags_win():
    vit = build_recipe("vit-b16-in21k", {})
    assert vit.model == "google/vit-base-patch16-224-in21k" and vit.focal_gamma == 2.0 and vit.label_smoothing == 0.1
    assert build_recipe("vit-b16-in21k", {"focal_gamma": 0.0, "model": "/m", "epochs": None}).focal_gamma == 0.0
    members = [build_recipe(preset, {}) for preset in ENSEMBLES["convnext-dinov2"].values()]
    assert [m.model for m in members] == ["facebook/convnextv2-base-22k-224", "facebook/dinov2-with-registers-base"]
    assert all(m.resize == "letterbox" for m in members)  # each expert trains letterboxed; the fit sets the threshold
    for preset in PRESETS:
        assert build_recipe(preset, {}).regime == "native"
    assert Recipe().regime == "native" and Recipe().distortions() == []  # no augmentation unless asked


def test_the_bench_and_the_stand_ins_expand_an_ensemble_preset_into_its_members():
    from sn72_lab.preset_models import BUILDERS, single_presets

    assert single_presets(["convnext-dinov2", "sn72-dinov2", "vit-b16-in21k"]) == [
        "sn72-convnextv2", "sn72-dinov2", "vit-b16-in21k"]
    assert single_presets(["all"]) == list(PRESETS)
    assert {str(p["model"]) for p in PRESETS.values()} <= set(BUILDERS)  # every preset has a stand-in
    with pytest.raises(ValueError, match="unknown preset"):
        single_presets(["vit-l"])


def test_an_ensemble_preset_names_its_members_and_an_unknown_one_is_refused():
    with pytest.raises(TrainError, match=r"--preset sn72-convnextv2.*--preset sn72-dinov2"):
        build_recipe("convnext-dinov2", {})
    with pytest.raises(TrainError, match="unknown preset 'nope'"):
        build_recipe("nope", {})


@pytest.mark.slow  # the CLI imports transformers
def test_the_cli_says_what_an_ensemble_preset_is_in_one_line(capsys):
    assert cli.main(["x", "--out", "y", "--preset", "convnext-dinov2", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: 'convnext-dinov2' is an ensemble") and "\n" not in error


def test_earlier_regimes_crop_or_letterbox_every_training_image_then_distort():
    assert Recipe(regime="letterbox-224").distortions() == list(REGIME_DISTORTIONS)
    assert Recipe(regime="letterbox-224", augment=["blur"]).distortions() == ["blur"]
    image = _jpeg(640, 360, 3)
    example = data.Example(hashlib.sha256(image).hexdigest(), 1, "a.jpg", "s", lambda: image)
    for regime in ("centre-crop-224", "letterbox-224"):
        pixels = PixelSet([example], _start(), "squash", regime=regime)
        with Image.open(io.BytesIO(pixels.image_bytes(0))) as opened:
            assert opened.size == (224, 224)
    assert PixelSet([example], _start(), "squash").image_bytes(0) == image  # native: the stored bytes


@pytest.mark.slow  # the CLI imports transformers
def test_bad_recipe_values_are_one_line_errors(tmp_path, capsys):
    assert _main_code([str(tmp_path), "--out", str(tmp_path / "o"), "--regime", "rotate"]) == 2
    assert "argument --regime: invalid choice: 'rotate'" in capsys.readouterr().err.strip().splitlines()[-1]
    for argv in (["--synthetic-share", "0.95"], ["--focal-gamma", "-1"]):
        assert _main_code([str(tmp_path), "--out", str(tmp_path / "o"), *argv]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: bad recipe:") and argv[0][2:].replace("-", "_") in error
        assert "\n" not in error


def _main_code(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


# --- the synthetic share -------------------------------------------------------------------------------------------


def _jpeg(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _examples(count: int, prefix: str, seed: int) -> list[data.Example]:
    out = []
    for i in range(count):
        raw = _jpeg(16, 16, seed * 10_000 + i)
        out.append(data.Example(hashlib.sha256(raw).hexdigest(), i % 2, f"{prefix}{i}.jpg", prefix,
                                lambda raw=raw: raw))
    return out


def _start() -> StartingModel:
    geometry = Geometry((16, 16), [0.5] * 3, [0.5] * 3, 1 / 255)
    return StartingModel(model=None, processor=None, geometry=geometry, positive=1, negative=0)


@pytest.mark.parametrize(("real", "synthetic", "share"), [(100, 40, 0.3), (70, 500, 0.1), (33, 7, 0.5)])
def test_the_share_of_each_epoch_is_honoured_and_drawn_afresh(real, synthetic, share):
    mixed = mix.MixedSet(PixelSet(_examples(real, "r", 1), _start(), "squash"),
                         PixelSet(_examples(synthetic, "s", 2), _start(), "squash"), share, seed=3)
    draws = []
    for epoch in range(3):
        mixed.set_epoch(epoch)
        order = torch.randperm(len(mixed), generator=torch.Generator().manual_seed(epoch))  # the Trainer's shuffle
        sources = [mixed.source_example(int(i)).source for i in order]
        assert sources.count("s") / len(sources) == pytest.approx(share, abs=1 / len(sources) + 1e-9)
        assert sources.count("r") == real  # every real image once per epoch
        uses = np.bincount(mixed.draw, minlength=synthetic)
        assert uses.max() - uses.min() <= 1  # the synthetic set is used evenly
        draws.append(mixed.draw.tolist())
    assert draws[0] != draws[1]
    sample = mixed[len(mixed) - 1]
    assert sample["pixel_values"].shape == (3, 16, 16) and sample["labels"] in (0, 1)


def test_share_zero_adds_nothing_and_a_share_of_one_is_refused():
    assert mix.synthetic_per_epoch(100, 0.0) == 0
    with pytest.raises(TrainError, match="synthetic-share"):
        mix.synthetic_per_epoch(100, 1.0)


def _folder(root: Path, examples: list[data.Example]) -> Path:
    for e in examples:
        (root / str(e.label)).mkdir(parents=True, exist_ok=True)
        (root / str(e.label) / e.name).write_bytes(e.read())
    return root


def test_synthetic_images_never_reach_dev_or_fit_and_one_already_real_is_dropped(tmp_path):
    from sn72_tools.training.run import Inputs, _read_synthetic

    real = _examples(60, "r", 4)
    synthetic = _examples(20, "s", 5) + real[:3]  # three synthetic files that are real images of the run
    _folder(tmp_path / "real", real)
    _folder(tmp_path / "synthetic", synthetic)
    examples, counts = data.read_sources([tmp_path / "real"], progress=False)
    split = data.split_examples(examples, counts, dev_share=0.2, fit_share=0.2, seed=0)
    inputs = Inputs(data=[tmp_path / "real"], out=tmp_path / "out", synthetic=tmp_path / "synthetic", progress=False)
    side = _read_synthetic(inputs, split, 16)
    assert side is not None and side.dropped == 3 and len(side.examples) == 20
    held = {e.sha256 for e in split.dev + split.fit}
    assert held and not held & {e.sha256 for e in side.examples}
    assert {e.sha256 for e in side.examples} == {e.sha256 for e in synthetic[:20]}


def test_synthetic_and_its_share_go_together(tmp_path):
    from sn72_tools.training.run import Inputs, train

    with pytest.raises(TrainError, match="go together"):
        train(Recipe(synthetic_share=0.3), Inputs(data=[tmp_path], out=tmp_path / "o"))
    with pytest.raises(TrainError, match="go together"):
        train(Recipe(), Inputs(data=[tmp_path], out=tmp_path / "o", synthetic=tmp_path))
