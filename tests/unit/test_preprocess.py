"""Resize modes (squash, letterbox, center_crop): exact geometry, pad values, host and device paths agreeing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from cascade.experts.base import ExpertError
from cascade.experts.preprocess import (
    PREPROCESS_FILE,
    RESIZE_MODES,
    ResizePlan,
    batch_tensor,
    normalising_constants,
    plan_resize,
    recorded_resize,
    resize_on_device,
    resize_on_host,
    resolve_resize,
    write_preprocess_record,
)

MEAN, STD = [0.25, 0.5, 0.75], [0.5, 0.25, 0.125]
COLOUR = (10, 200, 30)


def solid(height: int, width: int, colour: tuple[int, int, int] = COLOUR) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (height, width, 3)).copy()


def host_batch(images: list[np.ndarray], size_hw: tuple[int, int], mode: str, fill: torch.Tensor) -> torch.Tensor:
    return torch.cat([resize_on_host(image, size_hw, mode, fill) for image in images])  # type: ignore[arg-type]


def both_paths(images: list[np.ndarray], size_hw: tuple[int, int], mode: str, fill: torch.Tensor) -> list[torch.Tensor]:
    """The PIL path and the torch path (the one CUDA runs), here on the CPU."""
    return [host_batch(images, size_hw, mode, fill), resize_on_device(images, size_hw, "cpu", mode, fill)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "target", "mode", "plan"),
    [
        ((4, 8), (8, 8), "squash", ResizePlan((0, 0, 4, 8), (8, 8), (0, 0))),
        ((4, 8), (8, 8), "letterbox", ResizePlan((0, 0, 4, 8), (4, 8), (2, 0))),
        ((3, 8), (8, 8), "letterbox", ResizePlan((0, 0, 3, 8), (3, 8), (2, 0))),  # odd border: 2 above, 3 below
        ((100, 50), (32, 32), "letterbox", ResizePlan((0, 0, 100, 50), (32, 16), (0, 8))),
        ((1080, 1920), (960, 960), "letterbox", ResizePlan((0, 0, 1080, 1920), (540, 960), (210, 0))),
        ((4, 12), (4, 4), "center_crop", ResizePlan((0, 4, 4, 4), (4, 4), (0, 0))),
        ((8, 4), (2, 2), "center_crop", ResizePlan((2, 0, 4, 4), (2, 2), (0, 0))),
        ((480, 640), (224, 224), "center_crop", ResizePlan((0, 80, 480, 480), (224, 224), (0, 0))),
        ((480, 640), (240, 160), "center_crop", ResizePlan((0, 160, 480, 320), (240, 160), (0, 0))),
    ],
)
def test_the_geometry_of_each_mode(source, target, mode, plan) -> None:
    assert plan_resize(source, target, mode) == plan


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 3000), st.integers(1, 3000), st.integers(8, 1024), st.integers(8, 1024),
)  # fmt: skip
def test_letterbox_fits_inside_touching_two_sides_and_center_crop_keeps_the_target_aspect(h, w, th, tw) -> None:
    box = plan_resize((h, w), (th, tw), "letterbox")
    new_h, new_w = box.resized_hw
    assert new_h <= th and new_w <= tw and (new_h == th or new_w == tw)
    scale = min(th / h, tw / w)  # the aspect is kept up to rounding (and at least one pixel)
    assert abs(new_h - h * scale) <= 0.5 + 1e-9 or new_h == 1
    assert abs(new_w - w * scale) <= 0.5 + 1e-9 or new_w == 1
    top, left = box.offset
    assert top == (th - new_h) // 2 and left == (tw - new_w) // 2
    crop = plan_resize((h, w), (th, tw), "center_crop")
    ctop, cleft, ch, cw = crop.crop
    assert ctop >= 0 and cleft >= 0 and ctop + ch <= h and cleft + cw <= w
    assert ch == h or cw == w  # the largest such crop
    assert abs(ctop - (h - ch - ctop)) <= 1 and abs(cleft - (w - cw - cleft)) <= 1  # centred
    if ch == h:  # the target's aspect up to rounding (and at least one pixel)
        assert abs(cw - h * tw / th) <= 0.5 + 1e-9 or cw in (1, w)
    else:
        assert abs(ch - w * th / tw) <= 0.5 + 1e-9 or ch == 1


def test_letterbox_puts_the_content_in_the_middle_and_pads_with_the_fill() -> None:
    fill = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    for batch in both_paths([solid(3, 8)], (8, 8), "letterbox", fill):
        assert batch.shape == (1, 3, 8, 8)
        image = batch[0].permute(1, 2, 0)
        assert torch.allclose(image[2:5], torch.tensor(COLOUR, dtype=torch.float32).expand(3, 8, 3), atol=1e-3)
        assert torch.equal(image[:2], torch.tensor([1.0, 2.0, 3.0]).expand(2, 8, 3))
        assert torch.equal(image[5:], torch.tensor([1.0, 2.0, 3.0]).expand(3, 8, 3))
    # a tall image: the border is left and right
    for batch in both_paths([solid(40, 20)], (10, 10), "letterbox", fill):
        image = batch[0].permute(1, 2, 0)
        assert torch.allclose(image[:, 2:7], torch.tensor(COLOUR, dtype=torch.float32).expand(10, 5, 3), atol=1e-3)
        assert torch.equal(image[:, :2], torch.tensor([1.0, 2.0, 3.0]).expand(10, 2, 3))
        assert torch.equal(image[:, 7:], torch.tensor([1.0, 2.0, 3.0]).expand(10, 3, 3))


def test_the_letterbox_border_normalises_to_zero_by_default_and_to_the_fill_when_given() -> None:
    images = [solid(30, 60)]
    out = batch_tensor(images, (16, 16), MEAN, STD, "cpu", torch.float32, resize="letterbox")
    assert torch.equal(out[0, :, :4], torch.zeros(3, 4, 16))  # the processor's mean
    assert torch.equal(out[0, :, 12:], torch.zeros(3, 4, 16))
    content = (torch.tensor(COLOUR) / 255.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out[0, :, 4:12].permute(1, 2, 0), content.expand(8, 16, 3), atol=1e-5)
    black = batch_tensor(images, (16, 16), MEAN, STD, "cpu", torch.float32, resize="letterbox", fill=[0, 0, 0])
    expected = -torch.tensor(MEAN) / torch.tensor(STD)
    assert torch.allclose(black[0, :, 0, 0], expected, atol=1e-6)


def test_the_normalising_constants_are_made_once_and_the_same_under_inference_mode_as_without() -> None:
    normalising_constants.cache_clear()
    with torch.inference_mode():  # a worker's first batch: the tensors it caches must serve training code too
        out = batch_tensor([solid(8, 8)], (8, 8), MEAN, STD, "cpu", torch.float32)
        first = normalising_constants(tuple(MEAN), tuple(STD), 1 / 255, "cpu", None)
    again = normalising_constants(tuple(MEAN), tuple(STD), 1 / 255, "cpu", None)
    assert all(a is b for a, b in zip(first, again, strict=True))  # no copy to the device per batch
    assert not any(t.is_inference() for t in first)
    expected = (torch.tensor(COLOUR) / 255.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out[0].permute(1, 2, 0), expected.expand(8, 8, 3), atol=1e-5)
    other = normalising_constants(tuple(MEAN), tuple(STD), 1 / 255, "cpu", (0.0, 0.0, 0.0))
    assert other[2] is not first[2] and torch.equal(other[2].flatten(), torch.zeros(3))


def test_center_crop_keeps_only_the_middle() -> None:
    bands = np.zeros((4, 12, 3), dtype=np.uint8)
    bands[:, 4:8] = 255  # the middle third is white, the sides black
    zero = torch.zeros((1, 3, 1, 1))
    for size in [(4, 4), (8, 8), (2, 2)]:  # as it is, upscaled, downscaled
        for batch in both_paths([bands], size, "center_crop", zero):
            assert torch.allclose(batch, torch.full((1, 3, *size), 255.0), atol=1e-3)
    tall = np.zeros((12, 4, 3), dtype=np.uint8)
    tall[4:8] = 255
    for batch in both_paths([tall], (4, 4), "center_crop", zero):
        assert torch.allclose(batch, torch.full((1, 3, 4, 4), 255.0), atol=1e-3)


def test_squash_stretches_the_whole_image() -> None:
    halves = np.zeros((40, 80, 3), dtype=np.uint8)
    halves[:, 40:] = 255  # left half black, right half white: after squashing to 20x20, still halves
    for batch in both_paths([halves], (20, 20), "squash", torch.zeros((1, 3, 1, 1))):
        assert torch.allclose(batch[0, :, :, :9], torch.zeros(3, 20, 9), atol=1e-3)
        assert torch.allclose(batch[0, :, :, 11:], torch.full((3, 20, 9), 255.0), atol=1e-3)
        assert 0 < batch[0, 0, 0, 9] < batch[0, 0, 0, 10] < 255  # the edge is blended, not moved


def smooth_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    """Random 8x8 colour fields upscaled: the two paths' antialiasing filters differ most on pixel noise."""
    rng = np.random.default_rng(seed)
    images = []
    for h, w in sizes:
        coarse = torch.from_numpy(rng.integers(0, 256, (1, 3, 8, 8)).astype(np.float32))
        fine = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        images.append(fine[0].permute(1, 2, 0).round().to(torch.uint8).numpy())
    return images


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_host_and_device_paths_agree_on_mixed_sizes(mode: str) -> None:
    images = smooth_images([(224, 224), (480, 640), (50, 900), (480, 640), (37, 23)])
    fill = torch.tensor([120.0, 30.0, 200.0]).view(1, 3, 1, 1)
    host, device = both_paths(images, (64, 48), mode, fill)
    assert host.shape == device.shape == (len(images), 3, 64, 48)
    assert (host - device).abs().mean().item() < 1.5
    # the batch is in input order: each row is the image resized alone
    for index, image in enumerate(images):
        assert torch.equal(device[index], resize_on_device([image], (64, 48), "cpu", mode, fill)[0])  # type: ignore[arg-type]


def test_one_tensor_per_batch_in_every_mode() -> None:
    images = [solid(30, 60), solid(60, 30, (1, 2, 3)), solid(30, 60)]
    for mode in RESIZE_MODES:
        out = batch_tensor(images, (16, 16), MEAN, STD, "cpu", torch.float32, resize=mode)  # type: ignore[arg-type]
        assert out.shape == (3, 3, 16, 16)
        assert torch.equal(out[0], out[2])


@pytest.mark.gpu
@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_cuda_and_host_paths_agree(mode: str) -> None:
    images = smooth_images([(480, 640), (1080, 1920), (480, 640)], seed=1)
    fill = torch.tensor([120.0, 30.0, 200.0]).view(1, 3, 1, 1)
    host = host_batch(images, (224, 224), mode, fill)
    cuda = resize_on_device(images, (224, 224), "cuda:0", mode, fill.cuda())  # type: ignore[arg-type]
    assert cuda.is_cuda and cuda.shape == host.shape
    assert (cuda.cpu() - host).abs().mean().item() < 1.5
    normalised = batch_tensor(images, (224, 224), MEAN, STD, "cuda:0", torch.bfloat16, resize=mode)  # type: ignore[arg-type]
    assert normalised.dtype == torch.bfloat16 and normalised.shape == (3, 3, 224, 224)


def test_a_model_folder_records_its_mode(tmp_path: Path) -> None:
    assert recorded_resize(str(tmp_path)) is None
    path = write_preprocess_record(tmp_path, "letterbox")
    assert path == tmp_path / PREPROCESS_FILE
    assert recorded_resize(str(tmp_path)) == "letterbox"
    path.write_text('{"resize": "center_crop", "trained_at": "2026-05-01"}')  # later keys are ignored
    assert recorded_resize(str(tmp_path)) == "center_crop"
    path.write_text('{"resize": "stretch"}')
    with pytest.raises(ExpertError, match="cannot read the resize mode"):
        recorded_resize(str(tmp_path))
    path.write_text("{not json")
    with pytest.raises(ExpertError, match=PREPROCESS_FILE):
        recorded_resize(str(tmp_path))


def test_a_hub_id_without_a_cached_record_has_none() -> None:
    assert recorded_resize("nobody-here/no-such-model") is None  # offline in tests: no cache, no network


def test_the_config_wins_over_the_record_with_a_warning() -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        assert resolve_resize("vit", None, None) == "squash"
        assert resolve_resize("owl", None, None, default="letterbox") == "letterbox"
        assert resolve_resize("vit", None, "center_crop") == "center_crop"
        assert resolve_resize("vit", "letterbox", "letterbox") == "letterbox"
        assert messages == []
        assert resolve_resize("vit", "squash", "letterbox") == "squash"
    finally:
        logger.remove(sink)
    assert len(messages) == 1
    assert "resize=squash from the config overrides the model's recorded letterbox" in messages[0]


def test_resize_is_a_config_error_on_backends_that_do_not_resize() -> None:
    from pydantic import ValidationError

    from cascade.config import ExpertConfig

    assert ExpertConfig(name="v", backend="hf_classifier", model="m", resize="letterbox").resize == "letterbox"
    assert ExpertConfig(name="v", backend="hf_classifier", model="m").resize is None
    with pytest.raises(ValidationError, match="resize='letterbox' does not apply to backend='detector'"):
        ExpertConfig(name="y", backend="detector", model="y.pt", resize="letterbox")
    with pytest.raises(ValidationError, match="resize"):
        ExpertConfig(name="v", backend="hf_classifier", model="m", resize="stretch")  # type: ignore[arg-type]
