"""Which files of a diffusers pipeline repository sn72-synth needs, for `sn72-download-models --synth-model`.

stabilityai/stable-diffusion-xl-base-1.0 holds far more than the pipeline loads: the single-file checkpoints
(sd_xl_base_1.0.safetensors, 6.9 GB, and its 0.9-VAE twin), full-precision and fp16 copies of every component,
ONNX, OpenVINO and Flax exports, a second VAE folder. Fetching "*.safetensors" would pull ~30 GB; these patterns
fetch one precision of the four weighted components plus configs, tokenizers and the scheduler (~7 GB in fp16).
"""

from __future__ import annotations

from pathlib import Path

WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
DEFAULT_VARIANT = "fp16"  # half the download; sn72-synth loads it for a hub id unless told otherwise


def allow_patterns(variant: str | None) -> list[str]:
    """Hub file patterns of an SDXL pipeline in one precision (`variant` None: the full-precision files)."""
    patterns = ["model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*"]
    for component in WEIGHTED_COMPONENTS:
        patterns.append(f"{component}/*.json")  # config and, for sharded weights, the index
        if variant:
            patterns += [f"{component}/*.{variant}.safetensors", f"{component}/*.{variant}-*-of-*.safetensors"]
        else:
            patterns += [f"{component}/{stem}{tail}" for stem in ("model", "diffusion_pytorch_model")
                         for tail in (".safetensors", "-*-of-*.safetensors")]
    return patterns


def fetch(model: str, variant: str | None, cache_dir: Path | None, token: str | None) -> str:
    """Snapshot the pipeline repository's needed files into the hub cache; huggingface_hub draws the progress."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(model, cache_dir=cache_dir, allow_patterns=allow_patterns(variant), token=token)
    flag = f" --variant {variant}" if variant else " --variant none"
    return f"downloaded to {folder}; run sn72-synth --model {model}{flag}"
