"""The production cascade's models at real size with random weights, and their tiny twins, built from configs.

`config/cascade.bench-production.yaml` runs the levels of `config/cascade.production.yaml` on these (nothing is
downloaded): the sizes, classes and processors are the real checkpoints'; the weights are random, so answers are
meaningless and latency and memory are real. The tiny twins are the same classes and processors at a few layers
and 32 wide, so CPU tests run the exact loading and preprocessing paths. `sn72-make-tiny-models --device cuda:0`
builds on the GPU in bfloat16 (an 8B model in seconds, then saved as safetensors).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sn72_lab.tiny_models import (
    _QWEN_SPECIAL,
    _QWEN_TEMPLATE,
    _train_tokenizer,
    build_owlv2_base,
    build_tiny_owlv2,
    build_tiny_vit,
    build_vit_b16,
    build_yolo11n,
    materialise,
)

# google/siglip2-so400m-patch14-384 is a fixed-resolution SigLIP2 checkpoint: transformers loads it as a SiglipModel
# (model_type "siglip") with Gemma's 256k-token vocabulary; both towers are So400m (1152 wide, 27 layers).
_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16}
_TINY_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


@dataclass(frozen=True)
class Parts:
    """What a builder saves: the model class and config (the weights are made from them), and the tokenizer and
    processors that go beside them."""

    model_class: Any
    config: Any
    beside: tuple[Any, ...]

    def save(self, folder: Path, seed: int, device: str) -> Path:
        import torch

        torch.manual_seed(seed)
        folder.mkdir(parents=True, exist_ok=True)
        materialise(self.model_class, self.config, device).save_pretrained(folder)
        for part in self.beside:
            part.save_pretrained(folder)
        return folder


def siglip2_so400m_parts(tiny: bool = False) -> Parts:
    """SigLIP2 So400m/14 at 384 px (~1.1B parameters) with a locally trained tokenizer; `tiny`: the same classes
    and processor at 1 layer, 32 px, for CPU tests."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tokenizer = _train_tokenizer(specials, add_eos="<eos>")
    tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token = specials[:4]
    tower, side, patch = (_TINY_TOWER, 32, 8) if tiny else (_SO400M, 384, 14)
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    config = SiglipConfig(
        text_config={**tower, **ids, "vocab_size": len(tokenizer) if tiny else 256_000,
                     "max_position_embeddings": 16 if tiny else 64, "projection_size": tower["hidden_size"]},
        vision_config={**tower, "image_size": side, "patch_size": patch},
    )
    return Parts(SiglipModel, config, (tokenizer, SiglipImageProcessor(size={"height": side, "width": side})))


def build_siglip2_so400m(folder: Path, seed: int = 0, device: str = "cpu", tiny: bool = False) -> Path:
    """`siglip2_so400m_parts` with random weights, saved like a hub snapshot."""
    return siglip2_so400m_parts(tiny).save(folder, seed, device)


# Qwen/Qwen3-VL-8B-Instruct's config.json (8.77B parameters); Qwen2.5-VL-7B-Instruct's where a transformers has no
# Qwen3-VL. `head_dim` is hidden / heads for Qwen2.5-VL, and the rope sections split head_dim / 2 frequencies.
_VLM_SPECS: dict[str, dict[str, Any]] = {
    "qwen3_vl": {
        "text": {"vocab_size": 151_936, "hidden_size": 4096, "intermediate_size": 12_288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                 "max_position_embeddings": 262_144,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                                     "mrope_interleaved": True}},
        "vision": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "patch_size": 16,
                   "out_hidden_size": 4096, "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]},
        "tiny_text": {"head_dim": 16, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                          "mrope_section": [2, 3, 3], "mrope_interleaved": True}},
        "tiny_vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
                        "out_hidden_size": 32, "num_position_embeddings": 256, "deepstack_visual_indexes": [1]},
        "patch": 16,
    },
    "qwen2_5_vl": {
        "text": {"vocab_size": 152_064, "hidden_size": 3584, "intermediate_size": 18_944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128_000,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
                   "out_hidden_size": 3584, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
        "tiny_text": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}},
        "tiny_vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
                        "out_hidden_size": 32, "window_size": 112, "fullatt_block_indexes": [1]},
        "patch": 14,
    },
}


def vlm_family() -> str:
    """Qwen3-VL where this transformers has it (4.57 and later), else Qwen2.5-VL."""
    import importlib.util

    return "qwen3_vl" if importlib.util.find_spec("transformers.models.qwen3_vl") else "qwen2_5_vl"


def production_vlm_parts(tiny: bool = False, family: str | None = None) -> Parts:
    """The production VLM's architecture (Qwen3-VL-8B-Instruct, or Qwen2.5-VL-7B) with random weights and a local
    tokenizer in which "Yes"/"No" are single tokens, saved with its processor like a hub snapshot; the config keeps
    the real vocabulary size. `tiny`: the same classes at 2 layers and 32 wide, for CPU tests."""
    import transformers
    from transformers import Qwen2VLImageProcessor

    family = family or vlm_family()
    spec = _VLM_SPECS[family]
    names = {"qwen3_vl": ("Qwen3VL", "qwen3_vl"), "qwen2_5_vl": ("Qwen2_5_VL", "qwen2_vl")}[family]
    config_class = getattr(transformers, f"{names[0]}Config")
    model_class = getattr(transformers, f"{names[0]}ForConditionalGeneration")
    processor_class = getattr(transformers, f"{names[0]}Processor")
    video_module = __import__(f"transformers.models.{names[1]}.video_processing_{names[1]}", fromlist=["_"])
    video_class = getattr(video_module, f"{names[0] if family == 'qwen3_vl' else 'Qwen2VL'}VideoProcessor")

    tokenizer = _train_tokenizer(_QWEN_SPECIAL, add_eos=None)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_SPECIAL}
    text = dict(spec["text"])
    if tiny:
        text.update({"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024,
                     **spec["tiny_text"]})
    text.update({"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                 "pad_token_id": ids["<|endoftext|>"]})
    config = config_class(
        text_config=text,
        vision_config=spec["tiny_vision"] if tiny else spec["vision"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    token_px = spec["patch"] * 2  # one visual token per 2x2 merged patches
    # the checkpoints' own pixel bounds in visual tokens (Qwen3-VL: 65,536 to 16,777,216 px at 32 px a token)
    image_processor = Qwen2VLImageProcessor(patch_size=spec["patch"], min_pixels=token_px**2 * (4 if tiny else 64),
                                            max_pixels=token_px**2 * (16 if tiny else 16_384))
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer,
                                video_processor=video_class(), chat_template=_QWEN_TEMPLATE)
    return Parts(model_class, config, (processor,))


def build_production_vlm(folder: Path, seed: int = 0, device: str = "cpu", tiny: bool = False,
                         family: str | None = None) -> Path:
    """`production_vlm_parts` with random weights, saved like a hub snapshot."""
    return production_vlm_parts(tiny, family).save(folder, seed, device)


# Real size, random weights (benchmarks); those with a `device` parameter build there (bfloat16 on CUDA).
LARGE_BUILDERS: dict[str, Callable[..., Path]] = {
    "vit-b16": build_vit_b16,
    "yolo11n": build_yolo11n,
    "owlv2-base": build_owlv2_base,
    "siglip2-so400m": build_siglip2_so400m,
    "qwen3-vl-8b": build_production_vlm,
}
# The production cascade's tiny twins: the same classes and processors, for CPU tests (`--size tiny`).
TWIN_BUILDERS: dict[str, Callable[..., Path]] = {
    "tiny-vit": build_tiny_vit,
    "tiny-siglip2-so400m": functools.partial(build_siglip2_so400m, tiny=True),
    "tiny-owlv2": build_tiny_owlv2,
    "tiny-qwen3-vl": functools.partial(build_production_vlm, tiny=True),
}
# The models of config/cascade.bench-production.yaml and of its tiny twin, in the order their levels use them.
PRODUCTION = {"full": ["vit-b16", "siglip2-so400m", "owlv2-base", "qwen3-vl-8b"],
              "tiny": ["tiny-vit", "tiny-siglip2-so400m", "tiny-owlv2", "tiny-qwen3-vl"]}
