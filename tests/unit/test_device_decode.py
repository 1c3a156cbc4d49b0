"""Device JPEG decoding, the parts that run anywhere: which JPEGs are left encoded, EXIF orientation on tensors,
and a batch whose decoder refuses some files (the decoder is passed in: a host stand-in with nvJPEG's contract)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.config import DecodeConfig
from cascade.decode import Decoded, DecodeError, DeviceJpeg, decode_image, decode_or_defer
from cascade.decode_pixels import _TRANSPOSE
from cascade.experts.base import ExpertError, check_probabilities
from cascade.experts.jpeg import Materialised, enable_device_jpeg, materialise, upright
from cascade.experts.preprocess import batch_tensor, resize_on_device
from tests.factories.jpegs import host_decoder, jpeg_bytes, photo, truncated, with_declared_size

LIMITS = DecodeConfig()


def deferred(data: bytes, limits: DecodeConfig = LIMITS, min_side: int | None = 224) -> DeviceJpeg:
    out = decode_or_defer(data, limits, min_side)
    assert isinstance(out, DeviceJpeg), out
    return out


# -- which JPEGs wait for the device ------------------------------------------------------------------------

@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:2", "4:2:0"])
def test_a_baseline_jpeg_is_left_encoded_with_its_header_facts(subsampling):
    data = jpeg_bytes(photo(480, 640), subsampling=subsampling, orientation=6)
    jpeg = deferred(data)
    assert jpeg.data is data and jpeg.size == (640, 480) and jpeg.orientation == 6
    assert jpeg.upright_hw == (640, 480)  # a quarter turn: the upright picture is portrait
    assert deferred(jpeg_bytes(photo(48, 64), grey=True)).size == (64, 48)


@pytest.mark.parametrize(("why", "data"), [
    ("PNG", None),
    ("progressive", jpeg_bytes(photo(480, 640), progressive=True)),
    ("RGB stored without YCbCr", jpeg_bytes(photo(480, 640), keep_rgb=True, subsampling="4:4:4")),
    ("CMYK", "cmyk"),
])
def test_jpegs_the_device_decoder_does_not_serve_as_pil_does_are_decoded_here(why, data):
    if data is None or data == "cmyk":
        buffer = io.BytesIO()
        image = Image.fromarray(photo(60, 80))
        image.convert("CMYK").save(buffer, format="JPEG") if data else image.save(buffer, format="PNG")
        data = buffer.getvalue()
    out = decode_or_defer(data, LIMITS, 224)
    assert isinstance(out, Decoded), why
    assert out.image.dtype == np.uint8 and out.image.shape[2] == 3


@pytest.mark.slow
def test_a_large_jpeg_is_decoded_here_at_reduced_scale_and_an_oversize_one_downscaled():
    big = jpeg_bytes(photo(1600, 2400), quality=50)  # 3.84 MP
    out = decode_or_defer(big, DecodeConfig(device_max_pixels=3_000_000), 224)
    assert isinstance(out, Decoded) and out.image.shape == (400, 600, 3)  # draft at 1/4: both sides >= 224
    assert isinstance(decode_or_defer(big, LIMITS, 224), DeviceJpeg)  # under the default 4 MP: the device's
    limits = DecodeConfig(max_pixels=1_000_000, device_max_pixels=4_000_000)
    shrunk = decode_or_defer(big, limits, 224)
    assert isinstance(shrunk, Decoded) and shrunk.downscaled
    assert shrunk.image.shape[0] * shrunk.image.shape[1] <= 1_000_000


def test_bombs_and_broken_headers_are_refused_before_anything_is_decoded():
    data = jpeg_bytes(photo(48, 64))
    with pytest.raises(DecodeError, match="hard limit"):
        decode_or_defer(with_declared_size(data, 60_000, 60_000), LIMITS, 224)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode_or_defer(with_declared_size(data, 5000, 5000), DecodeConfig(oversize="reject"), 224)
    with pytest.raises(DecodeError, match="unreadable JPEG header"):
        decode_or_defer(b"\xff\xd8\xff\xe0" + b"\x00" * 64, LIMITS, 224)
    with pytest.raises(DecodeError, match="not a readable image"):
        decode_or_defer(b"GIF89a" + b"\x00" * 64, LIMITS, 224)


def test_the_fallback_is_the_pil_path_for_the_same_bytes():
    data = jpeg_bytes(photo(480, 640), orientation=8)
    jpeg = deferred(data, min_side=224)
    assert np.array_equal(jpeg.host_pixels(), decode_image(data, LIMITS, 224).image)
    with pytest.raises(DecodeError, match="corrupt"):
        deferred(truncated(data)).host_pixels()


# -- EXIF orientation on the device -------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_on_a_tensor_matches_pils_transposes(orientation):
    array = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    for step in _TRANSPOSE.get(orientation, ()):
        image = image.transpose(step)
    turned = upright(torch.from_numpy(array).permute(2, 0, 1), orientation)
    assert np.array_equal(turned.permute(1, 2, 0).numpy(), np.asarray(image))


# -- a batch: decoded in one call, failures isolated ----------------------------------------------------------

class CountingDecoder:
    """The host decoder, counting calls and the files in each; `refuse` files fail as nvJPEG refuses a file."""

    def __init__(self, refuse: set[bytes] = frozenset(), error: str = "nvjpeg status 6: unsupported") -> None:
        self.calls: list[int] = []
        self.refuse = refuse
        self.error = error

    def __call__(self, encoded: list[torch.Tensor], device: str) -> list[torch.Tensor]:
        self.calls.append(len(encoded))
        if any(e.numpy().tobytes() in self.refuse for e in encoded):
            raise RuntimeError(self.error)
        return host_decoder(encoded, device)


def test_arrays_pass_through_untouched_and_jpegs_decode_upright_in_one_call():
    array = photo(30, 40, seed=3)
    datas = [jpeg_bytes(photo(48, 64, seed=i), orientation=o) for i, o in enumerate((1, 6, 3))]
    decoder = CountingDecoder()
    batch = materialise([deferred(datas[0]), array, deferred(datas[1]), deferred(datas[2])], "cpu", decoder)
    assert decoder.calls == [3] and not batch.refused
    assert batch.images[1] is array
    for got, data in zip([batch.images[0], *batch.images[2:]], datas, strict=True):
        expected = decode_image(data, LIMITS).image  # PIL, full size, upright
        assert isinstance(got, torch.Tensor)
        assert np.array_equal(got.permute(1, 2, 0).numpy(), expected)


def test_a_refused_file_is_found_by_halving_and_decoded_by_pil_instead():
    datas = [jpeg_bytes(photo(48, 64, seed=i)) for i in range(16)]
    decoder = CountingDecoder(refuse={datas[11]})
    batch = materialise([deferred(d, min_side=None) for d in datas], "cpu", decoder)
    assert not batch.refused and len(batch.images) == 16
    assert len(decoder.calls) <= 2 * 4 + 1  # halving: a few calls, not one per image
    assert isinstance(batch.images[11], np.ndarray)  # PIL's array for the refused file
    assert np.array_equal(batch.images[11], decode_image(datas[11], LIMITS).image)
    assert all(isinstance(image, torch.Tensor) for i, image in enumerate(batch.images) if i != 11)


def test_a_file_nobody_can_decode_answers_alone_with_its_error():
    good = [jpeg_bytes(photo(48, 64, seed=i)) for i in range(5)]
    bad = truncated(jpeg_bytes(photo(480, 640, seed=9)))
    items = [deferred(d) for d in good[:2]] + [deferred(bad)] + [deferred(d) for d in good[2:]]
    batch = materialise(items, "cpu", CountingDecoder())
    assert list(batch.refused) == [2] and "corrupt" in str(batch.refused[2])
    answers = batch.answers([0.1, 0.2, 0.4, 0.5, 0.6])
    assert answers[:2] == [0.1, 0.2] and answers[3:] == [0.4, 0.5, 0.6] and isinstance(answers[2], DecodeError)
    checked = check_probabilities("x", answers, 6)
    assert checked[2] is answers[2]
    with pytest.raises(ExpertError):
        Materialised(3, [np.zeros((2, 2, 3), np.uint8)] * 2, {}).answers([0.5])


@pytest.mark.parametrize("error", ["CUDA out of memory. Tried to allocate 2.0 GiB", "an illegal memory access"])
def test_device_failures_are_not_blamed_on_a_file(error):
    datas = [jpeg_bytes(photo(48, 64, seed=i)) for i in range(4)]
    decoder = CountingDecoder(refuse=set(datas), error=error)
    with pytest.raises(RuntimeError, match=error.split()[1]):
        materialise([deferred(d) for d in datas], "cpu", decoder)
    assert decoder.calls == [4]


def test_a_jpeg_reaching_an_expert_without_a_decoder_is_a_bug_said_plainly():
    with pytest.raises(ExpertError, match="without a device decoder"):
        materialise([deferred(jpeg_bytes(photo(48, 64)))], "cpu", None)


def test_device_tensors_resize_as_host_arrays_do():
    arrays = [photo(48, 64, seed=1), photo(30, 90, seed=2), photo(48, 64, seed=3)]
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
    for mode in ("squash", "letterbox", "center_crop"):
        from_arrays = resize_on_device(arrays, (32, 32), "cpu", mode)  # type: ignore[arg-type]
        from_tensors = resize_on_device(tensors, (32, 32), "cpu", mode)  # type: ignore[arg-type]
        assert torch.equal(from_arrays, from_tensors)
    mixed = batch_tensor([arrays[0], tensors[1]], (16, 16), [0.5] * 3, [0.5] * 3, "cpu", torch.float32)
    alone = batch_tensor([arrays[0], arrays[1]], (16, 16), [0.5] * 3, [0.5] * 3, "cpu", torch.float32)
    assert torch.equal(mixed, alone)
    with pytest.raises(ValueError, match="3xHxW uint8"):
        batch_tensor([tensors[0].float()], (16, 16), [0.5] * 3, [0.5] * 3, "cpu", torch.float32)


def test_large_groups_are_resized_in_chunks_with_the_same_result(monkeypatch):
    import cascade.experts.preprocess as preprocess

    images = [photo(48, 64, seed=i) for i in range(5)]
    whole = resize_on_device(images, (16, 16), "cpu")
    monkeypatch.setattr(preprocess, "CHUNK_PIXELS", 48 * 64 * 2)  # two images a chunk
    assert torch.equal(resize_on_device(images, (16, 16), "cpu"), whole)


# -- the switch ------------------------------------------------------------------------------------------------

def test_the_switch_on_a_machine_without_cuda(tmp_path):
    from cascade.experts.registry import build_expert
    from sn72_lab.tiny_models import build_tiny_vit
    from tests.factories.engine import expert_config

    model = build_tiny_vit(tmp_path / "vit")
    expert = build_expert(expert_config("vit", model=str(model)), "cpu")
    assert expert.decodes_jpeg
    assert enable_device_jpeg(expert, "off") is None
    assert "PIL on the host (cpu is not a CUDA device)" in (enable_device_jpeg(expert, "auto") or "")
    assert not expert.takes_jpeg()
    with pytest.raises(ExpertError, match=r"decode\.device is 'on' but cpu is not a CUDA device"):
        enable_device_jpeg(expert, "on")
    detector = build_expert(expert_config("det", backend="detector", model="yolo.pt"), "cuda:0")
    assert not detector.decodes_jpeg and enable_device_jpeg(detector, "on") is None  # needs host arrays: PIL


def test_jpegs_wait_encoded_only_when_every_replica_of_level_one_decodes_them():
    from types import SimpleNamespace

    from cascade.serving import defers_jpegs

    def level(*replicas: bool) -> SimpleNamespace:
        batchers = [SimpleNamespace(takes_jpeg=takes) for takes in replicas]
        return SimpleNamespace(replicas=lambda: batchers)

    assert defers_jpegs([level(True), level(False)])  # a later level's arrays are decoded when it runs
    assert not defers_jpegs([level(True, False)])  # a replica on a second GPU, or a host expert beside it
    assert not defers_jpegs([level(False), level(True)])
    assert not defers_jpegs([])


@pytest.mark.slow
def test_the_gpu_check_script_answers_help_and_refuses_a_machine_without_cuda(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(root)}
    script = str(root / "scripts" / "gpu_decode_check.sh")
    done = subprocess.run(["bash", script, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "gpu_decode_check.sh [OUT_DIR]" in done.stdout
    assert list(tmp_path.iterdir()) == []
    if not torch.cuda.is_available():
        done = subprocess.run(["bash", script, "out"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and "no CUDA device visible" in done.stdout and done.stderr == ""
        assert list(tmp_path.iterdir()) == []
