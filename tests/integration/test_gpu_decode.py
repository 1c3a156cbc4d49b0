"""nvJPEG against PIL on a GPU, in every subsampling mode and EXIF orientation.

Tolerances: the same decoded size; pixels within the bound torchvision's own tests use (mean absolute difference
under 2 levels of 255; the 99th percentile under 20); answers of tiny models within 0.02 of those on PIL's
full-size pixels (float32) and within 0.05 of the engine's reduced-scale PIL path (which by itself moves the tiny CLIP's
answers by up to 0.021). A refused file answers alone; the engine's level 1 decodes nothing on the host.
Run on a CUDA machine: `bash scripts/gpu_decode_check.sh OUT` (docs/decoding.md).
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cascade.decode
from cascade.config import CascadeConfig, DecodeConfig, EngineConfig, ExpertConfig, LevelConfig
from cascade.decode import DecodeError, DeviceJpeg, decode_image, decode_or_defer
from cascade.experts import jpeg as jpeg_module
from cascade.experts.base import Expert
from cascade.experts.jpeg import enable_device_jpeg, materialise, nvjpeg
from cascade.experts.registry import build_expert
from cascade.request import Job
from tests.factories.jpegs import SUBSAMPLING, jpeg_bytes, photo, truncated

pytestmark = pytest.mark.gpu

DEVICE = "cuda:0"
LIMITS = DecodeConfig()
MEAN_LEVELS = 2.0  # torchvision's test_decode_jpegs_cuda bound against libjpeg
P99_LEVELS = 20.0
ANSWERS = 0.02  # against PIL's full-size pixels (the tiny CLIP moves 0.0012 for +-3 levels of noise; its
# answers spread over 0.2 between these images, so a mix-up or a wrong orientation fails)
ANSWERS_REDUCED = 0.05  # against the engine's PIL path, decoded at reduced DCT scale (0.021 on its own, CPU)


def deferred(data: bytes, min_side: int | None = None) -> DeviceJpeg:
    out = decode_or_defer(data, LIMITS, min_side)
    assert isinstance(out, DeviceJpeg)
    return out


def on_device(data: bytes) -> np.ndarray:
    batch = materialise([deferred(data)], DEVICE, nvjpeg)
    assert not batch.refused
    (image,) = batch.images
    assert isinstance(image, torch.Tensor) and image.device.type == "cuda"
    return image.permute(1, 2, 0).cpu().numpy()


def assert_close_to_pil(data: bytes) -> None:
    expected = decode_image(data, LIMITS).image  # PIL at full size, upright
    got = on_device(data)
    assert got.shape == expected.shape
    error = np.abs(got.astype(np.float32) - expected.astype(np.float32))
    assert error.mean() < MEAN_LEVELS, f"mean |nvJPEG - PIL| = {error.mean():.2f}"
    assert np.percentile(error, 99) < P99_LEVELS, f"p99 |nvJPEG - PIL| = {np.percentile(error, 99):.1f}"


@pytest.mark.parametrize("mode", [*SUBSAMPLING, "grey"])
@pytest.mark.parametrize("size_hw", [(224, 224), (217, 333), (480, 640), (1080, 1920)])
def test_nvjpeg_decodes_as_pil_does_in_every_subsampling_mode(mode, size_hw):
    picture = photo(*size_hw, seed=size_hw[1])
    assert_close_to_pil(jpeg_bytes(picture, grey=mode == "grey", subsampling="4:2:0" if mode == "grey" else mode))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_on_the_device(orientation):
    assert_close_to_pil(jpeg_bytes(photo(480, 640, seed=orientation), orientation=orientation))


def test_a_batch_of_mixed_files_decodes_in_one_call_as_each_does_alone():
    datas = [jpeg_bytes(photo(480, 640, seed=i), orientation=1 + i % 8, subsampling=list(SUBSAMPLING)[i % 3])
             for i in range(12)]
    batch = materialise([deferred(d) for d in datas], DEVICE, nvjpeg)
    for image, data in zip(batch.images, datas, strict=True):
        assert torch.equal(image, materialise([deferred(data)], DEVICE, nvjpeg).images[0])


def test_a_refused_file_is_decoded_by_pil_and_the_rest_of_the_batch_by_nvjpeg():
    datas = [jpeg_bytes(photo(480, 640, seed=i)) for i in range(16)]
    refused = datas[9]

    def failing_on_one(encoded: list[torch.Tensor], device: str) -> list[torch.Tensor]:  # at the decoder boundary
        if any(e.numpy().tobytes() == refused for e in encoded):
            raise RuntimeError("nvjpeg status 6: unsupported bitstream (injected)")
        return nvjpeg(encoded, device)

    batch = materialise([deferred(d) for d in datas], DEVICE, failing_on_one)
    assert not batch.refused
    assert isinstance(batch.images[9], np.ndarray)  # PIL's pixels
    for i, image in enumerate(batch.images):
        if i != 9:
            assert torch.equal(image, nvjpeg([torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8)], DEVICE)[0])


def test_a_truncated_file_in_a_batch_answers_alone():
    datas = [jpeg_bytes(photo(480, 640, seed=i)) for i in range(8)]
    datas[3] = truncated(datas[3])
    batch = materialise([deferred(d) for d in datas], DEVICE, nvjpeg)
    alone = [materialise([deferred(d)], DEVICE, nvjpeg) for d in datas]
    # nvJPEG may refuse the file (then PIL refuses it too: its DecodeError) or decode what is there
    if 3 in batch.refused:
        assert isinstance(batch.refused[3], DecodeError) and len(batch.images) == 7
    kept = [i for i in range(8) if i not in batch.refused]
    for image, i in zip(batch.images, kept, strict=True):
        if i != 3:
            assert torch.equal(image, alone[i].images[0])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from sn72_lab.tiny_models import build_tiny_clip, build_tiny_owlv2, build_tiny_vit

    folder = tmp_path_factory.mktemp("models")
    return {"hf_classifier": build_tiny_vit(folder / "vit"), "zero_shot": build_tiny_clip(folder / "clip"),
            "owlv2": build_tiny_owlv2(folder / "owlv2")}


def loaded(backend: str, model: Path) -> Expert:
    """float32: the comparison is of decoders, not of bfloat16's rounding."""
    config = ExpertConfig(name=backend, backend=backend, model=str(model), device=DEVICE, dtype="float32")
    expert = build_expert(config, DEVICE)
    expert.load()
    assert enable_device_jpeg(expert, "on") and expert.takes_jpeg()
    return expert


@pytest.mark.parametrize("backend", ["hf_classifier", "zero_shot", "owlv2"])
def test_tiny_models_answer_nvjpeg_pixels_as_they_answer_pils(backend, models):
    expert = loaded(backend, models[backend])
    datas = [jpeg_bytes(photo(h, w, seed=i), subsampling=list(SUBSAMPLING)[i % 3], orientation=1 + i % 8)
             for i, (h, w) in enumerate([(480, 640), (224, 224), (1080, 1920), (217, 333)] * 2)]
    side = expert.input_side()
    from_jpegs = expert.predict_batch([deferred(d, side) for d in datas])  # type: ignore[list-item]
    full = expert.predict_batch([decode_image(d, LIMITS).image for d in datas])
    reduced = expert.predict_batch([decode_image(d, LIMITS, side).image for d in datas])  # the engine's PIL path
    assert from_jpegs == pytest.approx(full, abs=ANSWERS)
    assert from_jpegs == pytest.approx(reduced, abs=ANSWERS_REDUCED)


def test_the_engine_decodes_nothing_on_the_host_for_level_one(models, monkeypatch):
    from cascade.engine import Engine

    pil: list[int] = []
    real = cascade.decode._decode_pixels
    monkeypatch.setattr(cascade.decode, "_decode_pixels", lambda *a, **k: pil.append(1) or real(*a, **k))
    vit = ExpertConfig(name="vit", backend="hf_classifier", model=str(models["hf_classifier"]), device=DEVICE,
                       max_batch=32, warmup_batches=1)
    cascade_config = CascadeConfig(levels=[LevelConfig(name="l1", experts=[vit], exit_margin=0.0)])
    payloads = [base64.b64encode(jpeg_bytes(photo(480, 640, seed=i))).decode() for i in range(64)]
    answers: dict[str, list[float]] = {}
    for mode in ("auto", "off"):
        engine = Engine(EngineConfig(cascade=cascade_config, decode={"device": mode}))
        engine.start()
        try:
            assert engine.serving.defer_jpegs is (mode == "auto")
            pil.clear()
            now = time.monotonic()
            futures = [engine.submit(Job(payload=p, arrival_s=now, deadline_s=now + 5.0)) for p in payloads]
            answers[mode] = [f.result(10).probability for f in futures]
            assert time.monotonic() < now + 5.0
            assert len(pil) == (0 if mode == "auto" else len(payloads))
        finally:
            engine.close()
    assert answers["auto"] == pytest.approx(answers["off"], abs=ANSWERS_REDUCED)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_one_gpu_keeps_nvjpeg_and_the_others_get_host_arrays(models):
    loaded("hf_classifier", models["hf_classifier"])  # claims cuda:0 (if no test did before)
    assert jpeg_module._owner == DEVICE
    other = build_expert(ExpertConfig(name="vit1", backend="hf_classifier", model=str(models["hf_classifier"]),
                                      device="cuda:1"), "cuda:1")
    other.load()
    note = enable_device_jpeg(other, "on") or ""
    assert "already decodes for cuda:0" in note and not other.takes_jpeg()
