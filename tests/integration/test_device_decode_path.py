"""The request path with experts that decode JPEGs themselves (on the CPU here: the decoder is passed in, a host
stand-in with nvJPEG's contract; tests/integration/test_gpu_decode.py runs nvJPEG itself).

Level 1 pays for no host decode; a later level that needs arrays gets them decoded then, once; a bomb or a broken
header is refused before the device decoder is called; a file no decoder reads answers its request alone.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

import cascade.decode
from cascade.config import EngineConfig, ExpertConfig, SchedulerConfig
from cascade.decode import DecodeError, DeviceJpeg
from cascade.engine import Engine
from cascade.experts.base import Expert
from cascade.experts.jpeg import materialise
from cascade.request import Job, Status
from tests.factories.engine import cascade_config, expert_config, make_job
from tests.factories.jpegs import host_decoder, jpeg_bytes, photo, truncated, with_declared_size

Events = list[str]


def brightness(image: np.ndarray | torch.Tensor) -> float:
    """P(roadwork) read off the picture: its mean brightness (so a mix-up inside a batch changes answers)."""
    return float(image.float().mean()) / 255.0 if isinstance(image, torch.Tensor) else float(image.mean()) / 255.0


class DecodingExpert(Expert):
    """Takes JPEGs encoded and decodes them with `decoder` in its batch, as the GPU backends do with nvJPEG."""

    decodes_jpeg = True

    def __init__(self, config: ExpertConfig, device: str, decoder: Callable[..., list[torch.Tensor]],
                 events: Events, answer: Callable[[np.ndarray | torch.Tensor], float] = brightness) -> None:
        super().__init__(config, device)
        self.decoder, self.events, self.answer = decoder, events, answer
        self.kinds: list[list[str]] = []

    def load(self) -> None:
        self.jpeg_decoder = self.decoder  # what enable_device_jpeg gives a CUDA expert

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float | DecodeError]:
        self.kinds.append(["jpeg" if isinstance(image, DeviceJpeg) else "array" for image in images])
        self.events.append(f"{self.name}:{len(images)}")
        batch = materialise(images, self.device, self.jpeg_decoder)
        return batch.answers([self.answer(image) for image in batch.images])


class ArrayExpert(Expert):
    """Needs host arrays (as the ultralytics detector and the VLM processors do)."""

    def __init__(self, config: ExpertConfig, device: str, events: Events) -> None:
        super().__init__(config, device)
        self.events = events
        self.shapes: list[tuple[int, ...]] = []

    def load(self) -> None:
        pass

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        assert all(isinstance(image, np.ndarray) for image in images)
        self.shapes += [image.shape for image in images]
        self.events.append(f"{self.name}:{len(images)}")
        return [0.9 for _ in images]


class CountingDecoder:
    def __init__(self, refuse: Callable[[bytes], bool] = lambda data: False) -> None:
        self.files = 0
        self.refuse = refuse
        self.lock = threading.Lock()

    def __call__(self, encoded: list[torch.Tensor], device: str) -> list[torch.Tensor]:
        with self.lock:
            self.files += len(encoded)
        if any(self.refuse(e.numpy().tobytes()) for e in encoded):
            raise RuntimeError("nvjpeg: unsupported bitstream")
        return host_decoder(encoded, device)


@pytest.fixture
def pil_decodes(monkeypatch) -> Events:
    """Every host (PIL) pixel decode, recorded as it happens (the real one runs)."""
    events: Events = []
    real = cascade.decode._decode_pixels

    def recorded(*args, **kwargs):
        events.append("pil")
        return real(*args, **kwargs)

    monkeypatch.setattr(cascade.decode, "_decode_pixels", recorded)
    return events


def start(experts: dict[str, Expert], levels: list[list[ExpertConfig]], margins: list[float], device: str = "auto",
          **scheduler) -> Engine:
    def factory(config: ExpertConfig, _device: str) -> Expert:
        return experts[config.name]

    config = EngineConfig(cascade=cascade_config(levels, margins), scheduler=SchedulerConfig(**scheduler),
                          decode={"device": device})
    engine = Engine(config, expert_factory=factory)
    engine.start()
    return engine


def job_of(data: bytes, budget_s: float = 10.0) -> Job:
    return make_job(base64.b64encode(data).decode(), budget_s=budget_s)


def test_level_one_decodes_on_its_device_and_pays_no_host_decode(pil_decodes):
    events: Events = []
    config = expert_config("gpu", max_batch=8, max_wait_ms=1.0)
    gpu = DecodingExpert(config, "cpu", CountingDecoder(), events)
    engine = start({"gpu": gpu}, [[config]], [0.0])
    try:
        assert engine.serving.defer_jpegs
        datas = [jpeg_bytes(photo(480, 640, seed=i), orientation=1 + i % 8) for i in range(6)]
        results = [engine.submit(job_of(d)).result(10) for d in datas]
        assert pil_decodes == []  # not one PIL decode: the expert decoded every image itself
        assert all(kind == "jpeg" for kinds in gpu.kinds for kind in kinds)
        expected = [brightness(cascade.decode.decode_image(d, engine.config.decode).image) for d in datas]
        assert [r.probability for r in results] == pytest.approx(expected, abs=1e-6)
    finally:
        engine.close()


def test_a_level_that_needs_arrays_gets_them_decoded_then_once(pil_decodes):
    events: Events = []
    first = expert_config("gpu", max_batch=1, max_wait_ms=0.0)
    second = expert_config("host", max_batch=1, max_wait_ms=0.0)
    # bright pictures are confident at level 1; dark ones go on to level 2
    gpu = DecodingExpert(first, "cpu", CountingDecoder(), events,
                         answer=lambda image: 0.95 if brightness(image) > 0.5 else 0.5)
    host = ArrayExpert(second, "cpu", events)
    engine = start({"gpu": gpu, "host": host}, [[first], [second]], [0.3, 0.3])
    try:
        bright, dark = np.full((480, 640, 3), 230, np.uint8), np.full((480, 640, 3), 20, np.uint8)
        bright[0, 0], dark[0, 0] = (1, 2, 3), (4, 5, 6)
        for picture, levels_run in ((bright, 1), (dark, 2)):
            events.clear()
            pil_decodes.clear()
            result = engine.submit(job_of(jpeg_bytes(picture, quality=95))).result(10)
            assert result.levels_run == levels_run and result.status is Status.CONFIDENT
            assert pil_decodes == ([] if levels_run == 1 else ["pil"])
        # the host decode came after level 1 had answered, just before level 2
        assert events == ["gpu:1", "host:1"]
        assert host.shapes == [(480, 640, 3)]  # PIL's array, of the picture's size
    finally:
        engine.close()


def test_when_level_one_needs_arrays_the_image_is_decoded_at_once_for_every_expert(pil_decodes):
    events: Events = []
    first, beside = expert_config("gpu"), expert_config("host")
    gpu = DecodingExpert(first, "cpu", CountingDecoder(), events)
    engine = start({"gpu": gpu, "host": ArrayExpert(beside, "cpu", events)}, [[first, beside]], [0.0])
    try:
        assert not engine.serving.defer_jpegs
        engine.submit(job_of(jpeg_bytes(photo(480, 640)))).result(10)
        assert pil_decodes == ["pil"] and gpu.kinds == [["array"]]  # one decode in the pool, arrays for both
    finally:
        engine.close()


def test_without_cuda_auto_keeps_the_pil_path_and_on_refuses_to_start(tmp_path, pil_decodes):
    from cascade.experts.base import ExpertError
    from sn72_lab.tiny_models import build_tiny_vit

    vit = expert_config("vit", model=str(build_tiny_vit(tmp_path / "vit")), warmup_batches=0)
    cascade = cascade_config([[vit]], [0.0])
    refused = Engine(EngineConfig(cascade=cascade, decode={"device": "on"}))
    with pytest.raises(ExpertError, match=r"decode\.device is 'on' but cpu is not a CUDA device"):
        refused.start()
    refused.close()
    engine = Engine(EngineConfig(cascade=cascade))  # auto
    engine.start()
    try:
        assert not engine.serving.defer_jpegs
        assert 0.0 <= engine.submit(job_of(jpeg_bytes(photo(480, 640)))).result(10).probability <= 1.0
        assert pil_decodes == ["pil"]
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["bomb", "broken header", "not an image"])
def test_a_bad_jpeg_is_refused_before_the_device_decoder_is_called(kind):
    events: Events = []
    config = expert_config("gpu")
    decoder = CountingDecoder()
    engine = start({"gpu": DecodingExpert(config, "cpu", decoder, events)}, [[config]], [0.0])
    good = jpeg_bytes(photo(48, 64))
    data = {"bomb": with_declared_size(good, 60_000, 60_000), "broken header": good[:20] + b"\x00" * 40,
            "not an image": b"\x00" * 100}[kind]
    try:
        with pytest.raises(DecodeError):
            engine.submit(job_of(data)).result(10)
        assert decoder.files == 0 and events == []
    finally:
        engine.close()


@pytest.mark.slow
def test_a_jpeg_over_the_device_limit_reaches_the_expert_as_pils_reduced_array():
    events: Events = []
    config = expert_config("gpu")
    decoder = CountingDecoder()
    expert = DecodingExpert(config, "cpu", decoder, events)
    engine = start({"gpu": expert}, [[config]], [0.0])
    try:
        engine.submit(job_of(jpeg_bytes(photo(2200, 2200), quality=40))).result(10)  # 4.84 MP > 4.19 MP
        assert decoder.files == 0 and expert.kinds == [["array"]]
    finally:
        engine.close()


def test_a_file_no_decoder_reads_answers_alone_and_its_batch_is_answered():
    events: Events = []
    config = expert_config("gpu", max_batch=8, max_wait_ms=1000.0)  # waits for all eight: one batch
    datas = [jpeg_bytes(photo(480, 640, seed=i)) for i in range(8)]
    datas[5] = truncated(datas[5])  # the header opens; the scan is gone
    refused_by_device = datas[2]  # nvJPEG refuses it, PIL reads it
    decoder = CountingDecoder(refuse=lambda data: data in (datas[5], refused_by_device))
    expert = DecodingExpert(config, "cpu", decoder, events)
    engine = start({"gpu": expert}, [[config]], [0.0])
    try:
        futures = [engine.submit(job_of(d)) for d in datas]
        for i, future in enumerate(futures):
            if i == 5:
                with pytest.raises(DecodeError, match="corrupt"):
                    future.result(10)
                continue
            expected = brightness(cascade.decode.decode_image(datas[i], engine.config.decode).image)
            result = future.result(10)
            assert result.status is Status.CONFIDENT
            # PIL's array for the refused file is reduced (draft) where the device's is full size: close, not equal
            assert result.probability == pytest.approx(expected, abs=1e-6 if i != 2 else 2e-3)
        assert events == ["gpu:8"]  # one batch
    finally:
        engine.close()


def _blocked_pool(engine: Engine) -> threading.Event:
    """Every decode-pool thread held until the returned event is set (a pool that a flood of PNGs has busy)."""
    release = threading.Event()
    for _ in range(engine.config.scheduler.decode_workers):
        engine._decoder.submit(release.wait, 30)
    return release


@pytest.mark.parametrize("inline_limit", [1 << 20, 0])
def test_a_jpeg_for_the_device_is_checked_on_the_loop_without_waiting_for_the_decode_pool(pil_decodes, inline_limit):
    """Base64, hash and header of a small JPEG bound for the device decoder are done on the engine's loop: with
    every decode thread busy it is still answered; with the inline check off (0) it waits for a decode thread."""
    events: Events = []
    config = expert_config("gpu", max_batch=1, max_wait_ms=0.0)
    gpu = DecodingExpert(config, "cpu", CountingDecoder(), events)
    engine = start({"gpu": gpu}, [[config]], [0.0], decode_workers=1, inline_check_max_bytes=inline_limit)
    release = _blocked_pool(engine)
    try:
        data = jpeg_bytes(photo(480, 640), orientation=6)
        future = engine.submit(job_of(data))
        if inline_limit:
            result = future.result(10)
            assert gpu.kinds == [["jpeg"]] and pil_decodes == []
            expected = brightness(cascade.decode.decode_image(data, engine.config.decode).image)
            assert result.probability == pytest.approx(expected, abs=1e-6)
        else:
            with pytest.raises(TimeoutError):
                future.result(0.5)
            release.set()
            assert future.result(10).status is Status.CONFIDENT and gpu.kinds == [["jpeg"]]
    finally:
        release.set()
        engine.close()


@pytest.mark.parametrize("kind", ["progressive", "over the inline size"])
def test_what_the_loop_does_not_check_or_decode_goes_to_the_decode_pool(pil_decodes, kind):
    """A progressive JPEG needs PIL's pixels, and a JPEG over the inline size is checked in the pool too: neither
    is answered while every decode thread is busy, both are once one frees (the loop never decodes pixels)."""
    events: Events = []
    config = expert_config("gpu", max_batch=1, max_wait_ms=0.0)
    gpu = DecodingExpert(config, "cpu", CountingDecoder(), events)
    progressive = kind == "progressive"
    data = jpeg_bytes(photo(480, 640), progressive=progressive)
    limit = 1 << 20 if progressive else len(base64.b64encode(data)) - 1
    engine = start({"gpu": gpu}, [[config]], [0.0], decode_workers=1, inline_check_max_bytes=limit)
    release = _blocked_pool(engine)
    try:
        future = engine.submit(job_of(data))
        with pytest.raises(TimeoutError):
            future.result(0.5)
        assert pil_decodes == [] and events == []
        release.set()
        assert future.result(10).status is Status.CONFIDENT
        assert gpu.kinds == ([["array"]] if progressive else [["jpeg"]])
        assert pil_decodes == (["pil"] if progressive else [])
    finally:
        release.set()
        engine.close()
