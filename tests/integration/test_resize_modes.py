"""Resize modes through the backends: the model folder's recorded mode, the YAML override, NaFlex refusing one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from loguru import logger

from cascade.experts.base import ExpertError
from cascade.experts.hf_classifier import ClassifierExpert
from cascade.experts.preprocess import batch_tensor, write_preprocess_record
from cascade.experts.zero_shot import ZeroShotExpert
from sn72_lab.tiny_models import build_tiny_clip, build_tiny_siglip2, build_tiny_vit
from tests.factories.experts import load_expert, make_images


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resize")
    plain = build_tiny_vit(root / "vit")
    letterboxed = root / "vit-letterbox"
    shutil.copytree(plain, letterboxed)
    write_preprocess_record(letterboxed, "letterbox")
    return {"vit": plain, "vit-letterbox": letterboxed}


def classifier(model: Path, **overrides: object) -> ClassifierExpert:
    return load_expert(ClassifierExpert, "hf_classifier", model, options={"positive_labels": ["Roadwork"]}, **overrides)


def test_the_recorded_mode_is_used_and_changes_what_the_model_sees(models: dict[str, Path]) -> None:
    plain, letterboxed = classifier(models["vit"]), classifier(models["vit-letterbox"])
    assert plain.resize == "squash" and letterboxed.resize == "letterbox"
    square, wide = make_images([(64, 64), (40, 400)], seed=3)
    # a square image fills a square input whatever the mode; a wide one is squashed or bordered
    assert letterboxed.predict_batch([square]) == pytest.approx(plain.predict_batch([square]), abs=1e-6)
    squashed, bordered = (batch_tensor([wide], (32, 32), plain.mean, plain.std, "cpu", torch.float32, resize=mode)
                          for mode in ("squash", "letterbox"))
    assert torch.equal(bordered[..., :14, :], torch.zeros(1, 3, 14, 32))  # 32x3 content, centred, mean border
    assert not torch.equal(squashed, bordered)
    # what each expert answers is the model's answer on its own mode's pixels
    for expert, pixels in ((plain, squashed), (letterboxed, bordered)):
        with torch.inference_mode():
            expected = torch.softmax(expert.model(pixel_values=pixels).logits, dim=-1)[0, 1].item()
        assert expert.predict_batch([wide])[0] == pytest.approx(expected, abs=1e-6)
    # mixed shapes in one batch: each image answers as it does alone
    alone = [letterboxed.predict_batch([image])[0] for image in (square, wide, square)]
    assert letterboxed.predict_batch([square, wide, square]) == pytest.approx(alone, abs=1e-5)


def test_the_yaml_mode_wins_with_a_warning(models: dict[str, Path]) -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        crop = classifier(models["vit-letterbox"], resize="center_crop")
        same = classifier(models["vit-letterbox"], resize="letterbox")
    finally:
        logger.remove(sink)
    assert crop.resize == "center_crop" and same.resize == "letterbox"
    assert len(messages) == 1 and "overrides the model's recorded letterbox" in messages[0]


def test_zero_shot_applies_the_mode_and_naflex_refuses_one(tmp_path: Path) -> None:
    clip = build_tiny_clip(tmp_path / "clip")
    expert = load_expert(ZeroShotExpert, "zero_shot", clip, resize="letterbox")
    assert expert.resize == "letterbox"
    assert len(expert.predict_batch(make_images([(30, 90), (90, 30)]))) == 2
    siglip2 = build_tiny_siglip2(tmp_path / "siglip2")
    with pytest.raises(ExpertError, match="does not apply to a SigLIP2 NaFlex model"):
        load_expert(ZeroShotExpert, "zero_shot", siglip2, resize="center_crop")
