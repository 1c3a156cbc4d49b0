"""SDXL through diffusers: loading (hub id or folder, same call), the validators' i2i resize, batched generation.

The miner never imports this (diffusers is an operator-tool dependency). Loading follows the validators'
`from_pretrained` call (natix/validator/synthetic/config.py at 5d0756b) except the dtype: bfloat16 on CUDA here,
where the validators load float16 with model CPU offload (a smaller card); bf16 keeps the VAE out of fp16's
overflow (SDXL's VAE is marked force_upcast for that reason) at the same speed on an H200.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sn72_tools.synth.plan import Job, Settings, SynthError


@dataclass
class Pipelines:
    text_to_image: Any
    image_to_image: Any
    device: str


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipelines(model: str, device: str, variant: str | None = None) -> Pipelines:
    """Text-to-image from `model` (hub id or saved folder) and image-to-image sharing its weights."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    local = Path(model).expanduser()
    if model.startswith(("/", "./", "../", "~")) and not (local / "model_index.json").is_file():
        raise SynthError(f"--model {model}: no diffusers pipeline there (model_index.json missing)")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        text_to_image = StableDiffusionXLPipeline.from_pretrained(
            str(local) if local.exists() else model, dtype=dtype, variant=variant, use_safetensors=True,
            add_watermarker=False,  # the validators' images carry no invisible watermark either
        )
    # NOTE: broad on purpose: a missing snapshot, an offline hub and a wrong repo come from huggingface_hub,
    # diffusers and the OS with unrelated exception types; each is one line telling the operator what to run.
    except Exception as exc:  # reported as one line, exit 2
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SynthError(f"--model {model}: cannot load an SDXL pipeline ({first}); fetch it first with "
                         f"sn72-download-models --synth-model {model}") from exc
    text_to_image.set_progress_bar_config(disable=True)  # one bar per run (the CLI's), not one per batch
    text_to_image.to(device)
    image_to_image = StableDiffusionXLImg2ImgPipeline.from_pipe(text_to_image)
    image_to_image.set_progress_bar_config(disable=True)
    return Pipelines(text_to_image, image_to_image, device)


def validator_resize(frame: Image.Image, size: int) -> Image.Image:
    """The validators' i2i input: squashed to size x size (aspect not kept, LANCZOS) when either side exceeds it.

    NOTE: a frame no larger than `size` on both sides goes in unchanged, as in the validators' code; the subnet's
    dataset frames are dashcam-sized, so in practice every one is squashed to 1024x1024.
    """
    frame = frame.convert("RGB")
    if frame.width > size or frame.height > size:
        return frame.resize((size, size), Image.Resampling.LANCZOS)
    return frame


def batch_key(job: Job, frames_root: Path | None, size: int) -> tuple[Any, ...]:
    """Jobs with equal keys can share a batch: same mode and, for i2i, the same input size."""
    if job.mode == "t2i":
        return ("t2i",)
    assert frames_root is not None and job.source_frame is not None
    with Image.open(frames_root / job.source_frame) as frame:
        width, height = frame.size
    return ("i2i", (size, size) if width > size or height > size else (width, height))


def generate(pipelines: Pipelines, jobs: list[Job], settings: Settings, frames_root: Path | None) -> list[Image.Image]:
    """One batch (all t2i or all i2i of one size): one seeded generator per image, so an image does not depend on
    the batch it ran in (up to the kernels' batch-size numerics)."""
    import torch

    generators = [torch.Generator(device=pipelines.device).manual_seed(job.seed) for job in jobs]
    common: dict[str, Any] = {
        "prompt": [job.prompt for job in jobs], "negative_prompt": [job.negative_prompt for job in jobs],
        "num_inference_steps": settings.steps, "guidance_scale": settings.guidance, "generator": generators,
    }
    extra: dict[str, Any]
    if jobs[0].mode == "t2i":
        call, extra = pipelines.text_to_image, {"height": settings.size, "width": settings.size}
    else:
        assert frames_root is not None
        frames = []
        for job in jobs:
            try:
                with Image.open(frames_root / str(job.source_frame)) as frame:
                    frames.append(validator_resize(frame, settings.size))
            except OSError as exc:
                raise SynthError(f"--frames: cannot read {job.source_frame} ({exc})") from exc
        call, extra = pipelines.image_to_image, {"image": frames, "strength": settings.strength}
    try:
        with torch.inference_mode():
            return list(call(**common, **extra).images)
    except torch.cuda.OutOfMemoryError as exc:
        raise SynthError(f"out of GPU memory at {len(jobs)} image(s) per call; lower --batch-size (the images "
                         "done are kept: the same command continues)") from exc


def encode(image: Image.Image, image_format: str) -> bytes:
    """The image file's bytes (PNG as the validators' cache holds them, or JPEG at PIL's default quality as
    the wire carries them: docs/protocol.md)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if image_format == "png" else "JPEG")
    return buffer.getvalue()
