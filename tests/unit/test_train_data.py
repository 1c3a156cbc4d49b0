"""The trainer's data side without a model: reading and counting sources, the split, the replay guard, the
recipe and its presets, augmentation per epoch, the loss."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sn72_tools.evaluation.datasets import open_source
from sn72_tools.training import data
from sn72_tools.training.model import PixelSet, StartingModel, class_weights, make_loss
from sn72_tools.training.recipe import PRESETS, TrainError, build_recipe
from sn72_tools.training.synthetic import make_cone_folder


@pytest.fixture(scope="module")
def cones(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cones")
    make_cone_folder(root / "set", 40, seed=1)
    return root / "set"


def test_each_source_is_counted_duplicates_kept_once_and_conflicting_labels_left_out(cones, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(cones, other)
    (other / "0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    # one image of class 1 appears in `other` as class 0 too: its label cannot be trusted
    conflicted = sorted((cones / "1").glob("*.jpg"))[0]
    shutil.copy(conflicted, other / "0" / "conflict.jpg")
    examples, counts = data.read_sources([cones, other], progress=False)
    first, second = counts
    assert (first.labelled, first.unreadable, first.duplicates, first.conflicting) == (40, 0, 0, 1)
    # 40 copies (one of them the conflicted image), the broken file and the conflicting copy
    assert (second.labelled, second.unreadable, second.duplicates, second.conflicting) == (42, 1, 39, 2)
    assert second.first_unreadable is not None and second.first_unreadable.startswith("0/broken.jpg: image: ")
    assert len(examples) == 39 and len({e.sha256 for e in examples}) == 39
    assert hashlib.sha256(conflicted.read_bytes()).hexdigest() not in {e.sha256 for e in examples}
    assert all(e.source == first.source for e in examples)  # kept from the source read first


def test_the_split_is_stratified_seeded_and_counted_per_source(cones):
    examples, counts = data.read_sources([cones], progress=False)
    split = data.split_examples(examples, counts, dev_share=0.25, fit_share=0.25, seed=3)
    again = data.split_examples(examples, [data.SourceCount(counts[0].source)], dev_share=0.25, fit_share=0.25,
                                seed=3)
    other = data.split_examples(examples, [data.SourceCount(counts[0].source)], dev_share=0.25, fit_share=0.25,
                                seed=4)
    dev, fit = [e.sha256 for e in split.dev], [e.sha256 for e in split.fit]
    assert dev == [e.sha256 for e in again.dev] and fit == [e.sha256 for e in again.fit]
    assert (dev, fit) != ([e.sha256 for e in other.dev], [e.sha256 for e in other.fit])
    assert len(split.dev) == len(split.fit) == 10 and sum(e.label for e in split.dev) == sum(e.label for e in split.fit)
    train = {e.sha256 for e in split.train}
    assert len(train) == 20 and not train & set(dev) and not train & set(fit) and not set(dev) & set(fit)
    assert counts[0].train == {0: 10, 1: 10} and counts[0].dev == {0: 5, 1: 5} and counts[0].fit == {0: 5, 1: 5}
    assert split.dev_from == "25% of the data: 10 images, stratified, seed 3"
    assert split.fit_from == "25% of the data: 10 images, stratified, seed 3"
    assert any("10/10" in line for line in split.table())
    none = data.split_examples(examples, [data.SourceCount(counts[0].source)], dev_share=0.25, fit_share=0.0)
    assert none.fit == [] and "--refit needs --fit-data" in none.fit_from and len(none.train) == 30


def test_the_starting_models_own_training_images_are_never_dev_or_fit_images(cones):
    """The defect: 'before' was inflated when the data held the base model's training images (its split.json was
    not consulted). Dev and fit are now drawn only from images new to the starting model."""
    examples, counts = data.read_sources([cones], progress=False)
    base_seen = frozenset(e.sha256 for e in examples[:24])  # the base model trained on 24 of the 40
    split = data.split_examples(examples, counts, dev_share=0.2, fit_share=0.2, seed=0, base_seen=base_seen)
    assert not {e.sha256 for e in split.dev + split.fit} & base_seen
    assert base_seen <= {e.sha256 for e in split.train} and len(split.dev) == len(split.fit) == 3  # 20% of 16 new
    assert "20% of the 16 images new to the starting model (24 it trained on stayed in training)" in split.dev_from
    # an explicit set that holds them is refused, naming the lineage
    with pytest.raises(TrainError, match="shares 3 of its 20 images with the starting model's own training images"):
        data.split_examples(examples[::2], [data.SourceCount(counts[0].source)], dev=examples[1::2],
                            dev_counts=[data.SourceCount(counts[0].source)], seed=0,
                            base_seen=frozenset(e.sha256 for e in examples[1:7:2]))
    # too few new images for both sets
    with pytest.raises(TrainError, match="3 of the 40 images are new to the starting model: too few"):
        data.split_examples(examples, [data.SourceCount(counts[0].source)], seed=0,
                            base_seen=frozenset(e.sha256 for e in examples[:37]))


def test_excluded_images_have_no_role(cones):
    examples, counts = data.read_sources([cones], progress=False)
    judge = frozenset(e.sha256 for e in examples[::4])
    split = data.split_examples(examples, counts, seed=0, exclude=judge)
    assert not {e.sha256 for e in split.train + split.dev + split.fit} & judge
    assert counts[0].excluded == 10 and len(split.train) + len(split.dev) + len(split.fit) == 30


def test_the_replay_guard_refuses_a_dev_set_that_shares_an_image(cones, tmp_path):
    heldout = tmp_path / "heldout"
    make_cone_folder(heldout, 10, seed=2)
    shared = sorted((cones / "0").glob("*.jpg"))[3]
    shutil.copy(shared, heldout / "0" / "copied-under-another-name.jpg")
    examples, counts = data.read_sources([cones], progress=False)
    held, held_counts = data.read_sources([heldout], progress=False)
    with pytest.raises(TrainError) as error:
        data.split_examples(examples, counts, dev=held, dev_counts=held_counts, seed=0)
    message = str(error.value)
    assert "shares 1 of its 11 images with the training images (same content hash)" in message
    assert "0/copied-under-another-name.jpg" in message and f"0/{shared.name}" in message
    with pytest.raises(TrainError, match=r"the fit set \(--fit-data\) shares 1 of its 11 images with the training"):
        data.split_examples(examples, counts, fit=held, fit_counts=held_counts, seed=0)
    (heldout / "0" / "copied-under-another-name.jpg").unlink()
    held, held_counts = data.read_sources([heldout], progress=False)
    split = data.split_examples(examples, counts, dev=held, dev_counts=held_counts, fit_share=0.2, seed=0)
    assert len(split.train) == 32 and len(split.dev) == 10 and len(split.fit) == 8
    assert split.dev_from.startswith("the set ")


def test_one_class_or_too_few_images_are_clear_errors(cones, tmp_path):
    shutil.copytree(cones / "1", tmp_path / "positives" / "1")
    examples, counts = data.read_sources([tmp_path / "positives"], progress=False)
    with pytest.raises(TrainError, match=r"the training data holds only class 1 \(20 images\)"):
        data.split_examples(examples, counts, seed=0)
    few = tmp_path / "few"
    make_cone_folder(few, 5, seed=5)
    examples, counts = data.read_sources([few], progress=False)
    with pytest.raises(TrainError, match="5 images: too few to hold 2 out for early stopping and 2 for the calibr"):
        data.split_examples(examples, counts, seed=0)
    (tmp_path / "empty" / "0").mkdir(parents=True)
    with pytest.raises(TrainError, match="no labelled images in it"):
        data.read_sources([tmp_path / "empty"], progress=False)


def test_the_role_folders_hold_exactly_their_bytes_and_the_split_record_guards_resume(cones, tmp_path):
    examples, counts = data.read_sources([cones], progress=False)
    split = data.split_examples(examples, counts, seed=0)
    names = data.write_heldout(tmp_path / "dev", split.dev)
    source = open_source(tmp_path / "dev")
    read_back = {hashlib.sha256(item.read()).hexdigest(): item.label for item in source.items()}
    assert read_back == {e.sha256: e.label for e in split.dev}
    assert all(names[e.sha256] == f"{e.label}/{e.sha256}.jpg" for e in split.dev)
    data.write_split(tmp_path / "split.json", split)
    assert data.read_split(tmp_path / "split.json")["fit"] == sorted(e.sha256 for e in split.fit)
    data.check_resumed_split(tmp_path / "split.json", split)
    shifted = data.split_examples(examples, [data.SourceCount(counts[0].source)], seed=1)
    with pytest.raises(TrainError, match=r"--resume: the train images differ from the checkpoint's \(\d+ new"):
        data.check_resumed_split(tmp_path / "split.json", shifted)


def test_a_preset_fills_the_recipe_and_explicit_flags_win():
    recipe = build_recipe("sn72-convnextv2", {"epochs": 2, "seed": None})
    assert recipe.model == "facebook/convnextv2-base-22k-224" and recipe.epochs == 2
    assert (recipe.learning_rate, recipe.weight_decay, recipe.warmup_ratio, recipe.label_smoothing) == (
        5e-5, 0.05, 0.1, 0.05)
    assert recipe.class_weighting and recipe.resize == "letterbox" and recipe.mode == "full"
    assert build_recipe("sn72-dinov2", {}).model == "facebook/dinov2-with-registers-base"
    assert set(PRESETS) == {"sn72-convnextv2", "sn72-dinov2", "vit-b16-in21k"}
    plain = build_recipe(None, {})
    assert plain.model == "natix-network-org/roadwork" and plain.resize is None and not plain.augment
    with pytest.raises(TrainError, match="unknown preset 'sn71'"):
        build_recipe("sn71", {})
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_recipe(None, {"augment": ["rotate"]})


def _starting_model_stub_geometry() -> StartingModel:
    from sn72_tools.training.model import Geometry

    # PixelSet only reads the geometry and the class mapping of the starting model
    return StartingModel(model=None, processor=None, geometry=Geometry((32, 32), [0.5] * 3, [0.5] * 3, 1 / 255),
                         positive=1, negative=0)


def test_augmentation_is_off_by_default_and_drawn_per_image_and_epoch(cones):
    examples, _ = data.read_sources([cones], progress=False)
    start = _starting_model_stub_geometry()
    plain = PixelSet(examples, start, "letterbox")
    assert all(plain.image_bytes(i) == examples[i].read() for i in range(len(examples)))
    augmented = PixelSet(examples, start, "letterbox", augment=["jpeg", "blur"], augment_p=0.5, seed=0)
    first = [augmented.image_bytes(i) for i in range(len(examples))]
    assert first == [augmented.image_bytes(i) for i in range(len(examples))]  # the same epoch: the same draws
    changed = sum(a != e.read() for a, e in zip(first, examples, strict=True))
    assert 8 <= changed <= 32, changed  # about half of 40
    augmented.set_epoch(1)
    assert [augmented.image_bytes(i) for i in range(len(examples))] != first
    item = augmented[0]
    assert item["pixel_values"].shape == (3, 32, 32) and item["labels"] == examples[0].label


def test_letterbox_pixels_keep_the_border_at_the_normalised_mean(tmp_path):
    for label, colour in ((0, (0, 0, 255)), (1, (255, 0, 0))):
        (tmp_path / "wide" / str(label)).mkdir(parents=True)
        Image.new("RGB", (64, 32), colour).save(tmp_path / "wide" / str(label) / "flat.png")
    examples, _ = data.read_sources([tmp_path / "wide"], progress=False)
    pixels = PixelSet(examples, _starting_model_stub_geometry(), "letterbox")[0]["pixel_values"]
    assert torch.all(pixels[:, :8, :] == 0) and torch.all(pixels[:, 24:, :] == 0)  # 64x32 -> 32x16, centred
    assert pixels[:, 8:24, :].abs().min() > 0.9  # a saturated colour normalises to +-1


def test_the_loss_is_weighted_smoothed_cross_entropy_normalised_by_the_step_images():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5]])
    labels = torch.tensor([0, 1, 1])
    plain = make_loss(None, 0.0)({"logits": logits}, labels)
    assert plain == pytest.approx(float(F.cross_entropy(logits, labels)))
    weights = torch.tensor([2.0, 0.5])
    weighted = make_loss(weights, 0.1)({"logits": logits}, labels, num_items_in_batch=6)
    per_image = F.cross_entropy(logits, labels, weight=weights, label_smoothing=0.1, reduction="none")
    assert weighted == pytest.approx(float(per_image.sum() / 6))
    assert float(np.round(float(weighted), 6)) != float(np.round(float(plain), 6))


def test_class_weights_and_targets_follow_the_models_own_roadwork_index(cones):
    # a model whose roadwork class is index 0 (a kept head may order its labels either way)
    start = StartingModel(model=SimpleNamespace(config=SimpleNamespace(num_labels=2)), processor=None,
                          geometry=_starting_model_stub_geometry().geometry, positive=0, negative=1)
    weights = class_weights([0, 0, 0, 1], start)
    assert weights.tolist() == pytest.approx([2.0, 4 / 6])  # roadwork (1 in 4) at index 0, weighed up
    examples, _ = data.read_sources([cones], progress=False)
    targets = PixelSet(examples, start, "squash").classes
    assert targets == [1 - e.label for e in examples]
