"""Tiny random-weight models built from configs, saved like hub snapshots.

No machine here reaches a model hub: the demo and the tests build these into a folder and load them
through the same `from_pretrained` / `YOLO(...)` paths that load a hub id. Their predictions are
meaningless; they exercise shapes, batching, routing and timing.
`build_small_cnn` is the one meant to learn: a 702k-parameter ResNet that the trainer takes from chance to
well above it on the generated street task (sn72_tools/training/streets.py) on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sn72_tools.training.labels import ROADWORK_LABELS


def build_tiny_vit(folder: Path, seed: int = 0) -> Path:
    """A 2-layer ViT image classifier with the baseline's labels, plus its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(  # type: ignore[call-arg]  # num_labels etc. go through PretrainedConfig's kwargs
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        id2label=ROADWORK_LABELS,
        label2id={v: k for k, v in ROADWORK_LABELS.items()},
    )
    model = ViTForImageClassification(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def build_small_cnn(folder: Path, seed: int = 0, input_size: int = 112) -> Path:
    """A small ResNet (ResNet-18's layout at a quarter of its width: 702,354 parameters) that learns on a CPU.

    Stem of 16 channels, four stages of two basic blocks (16, 32, 64, 128 channels), the baseline's labels, saved
    with a processor that squashes to `input_size` square with ImageNet's mean and std. Random weights, like the
    other builders, but unlike the tiny ViT it is big enough to learn the generated street task
    (sn72_tools/training/streets.py) from a few hundred images in a few minutes on two cores.
    """
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ResNetConfig(  # type: ignore[call-arg]  # num_labels etc. go through PretrainedConfig's kwargs
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[2, 2, 2, 2],
        layer_type="basic",
        num_labels=2,
        id2label=ROADWORK_LABELS,
        label2id={v: k for k, v in ROADWORK_LABELS.items()},
    )
    model = ResNetForImageClassification(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    # NOTE: ViT's processor rather than ResNet's usual ConvNeXt one: it resizes to height x width with no centre
    # crop, which is what the miner's squash does, so a transformers pipeline and the miner see the same pixels.
    ViTImageProcessor(size={"height": input_size, "width": input_size}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def build_vit_b16(folder: Path, seed: int = 0, device: str = "cpu") -> Path:
    """A real-size ViT-B/16 at 224 with random weights (the baseline's architecture), for benchmarks."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    labels: dict[str, Any] = {
        "num_labels": 2,
        "id2label": ROADWORK_LABELS,
        "label2id": {v: k for k, v in ROADWORK_LABELS.items()},
    }
    config = ViTConfig(**labels)
    materialise(ViTForImageClassification, config, device).save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def materialise(model_class: Any, config: Any, device: str) -> Any:
    """A random-weight model built directly on `device`: bfloat16 on CUDA (an 8B model is initialised on the GPU in
    seconds and saved at half the size), float32 on the CPU (what the tiny models have always been)."""
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype)
    return model.eval()


# --- image-text, detector and VLM builders --------------------------------------------------------------------------

_ZERO_SHOT_FAMILIES = ("clip", "siglip", "siglip2")


def _tokenizer_corpus() -> list[str]:
    """Sentences the tiny tokenizers are trained on: the default prompts and question, so they tokenize sensibly."""
    from cascade.experts.options import VLMOptions, ZeroShotOptions

    zero_shot, vlm = ZeroShotOptions.model_validate({}), VLMOptions.model_validate({})
    words = [*zero_shot.positive_prompts, *zero_shot.negative_prompts, vlm.question, *vlm.yes_tokens, *vlm.no_tokens]
    extra = ["user", "assistant", "system", "a photo of a cat", "cones and barriers beside the road", "Yes No yes no"]
    return (words + extra) * 8


def _train_tokenizer(
    special_tokens: list[str], add_eos: str | None, gemma_style: bool = False, vocab_size: int = 512,
    corpus: list[str] | None = None,
) -> Any:
    """A BPE tokenizer trained here with the `tokenizers` library, wrapped for `save_pretrained`/`from_pretrained`.

    Byte-level by default (any text encodes, no unknown token). `gemma_style` trains the lower-cased, "▁"-spaced
    pipeline that transformers rebuilds around the saved vocabulary for SigLIP2 (its `Siglip2Tokenizer` ignores
    the saved pipeline), so the ids here are the ids there. `add_eos` appends that token to every sequence, as
    CLIP tokenizers do: CLIP's text tower pools at the end-of-text token.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if gemma_style:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
        tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
        # Training only: keeps merges inside words (the rebuilt tokenizer has no such split, nor needs one).
        tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
        tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens)
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    tokenizer.train_from_iterator(corpus or _tokenizer_corpus(), trainer)
    if add_eos is not None:
        eos_id = tokenizer.token_to_id(add_eos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {add_eos}", pair=f"$A {add_eos} $B {add_eos}", special_tokens=[(add_eos, eos_id)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def build_tiny_clip(folder: Path, seed: int = 0, family: str = "clip") -> Path:
    """A 1-layer image-text model (CLIP, SigLIP or SigLIP2 NaFlex) with a locally trained tokenizer.

    Saved with its tokenizer, image processor and processor, so `AutoModel`, `AutoTokenizer`,
    `AutoImageProcessor` and `AutoProcessor` all load the folder as they would a hub snapshot.
    """
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    if family not in _ZERO_SHOT_FAMILIES:
        raise ValueError(f"family must be one of {_ZERO_SHOT_FAMILIES}, got {family!r}")
    torch.manual_seed(seed)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tokenizer = _train_tokenizer(specials, add_eos="<eos>", gemma_style=family == "siglip2")
    tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token = specials[:4]
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, **ids}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    model: Any
    config: Any
    if family == "clip":
        config = CLIPConfig(
            text_config={**text, "max_position_embeddings": 32},
            vision_config={**vision, "image_size": 32, "patch_size": 8},
            projection_dim=16,
        )
        model = CLIPModel(config)
        image_processor: Any = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    elif family == "siglip":
        config = SiglipConfig(
            text_config={**text, "max_position_embeddings": 16},
            vision_config={**vision, "image_size": 32, "patch_size": 8},
        )
        model = SiglipModel(config)
        image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    else:
        from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

        config = Siglip2Config(
            text_config={**text, "max_position_embeddings": 16},
            vision_config={**vision, "patch_size": 8, "num_patches": 16},
        )
        model = Siglip2Model(config)
        image_processor = Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder


def build_tiny_siglip(folder: Path, seed: int = 0) -> Path:
    """`build_tiny_clip` of the SigLIP family (sigmoid loss: a learned logit bias, max-length text padding)."""
    return build_tiny_clip(folder, seed, family="siglip")


def build_tiny_siglip2(folder: Path, seed: int = 0) -> Path:
    """`build_tiny_clip` of the SigLIP2 NaFlex family (variable patch grids with an attention mask)."""
    return build_tiny_clip(folder, seed, family="siglip2")


def build_tiny_owlv2(folder: Path, seed: int = 0) -> Path:
    """A 1-layer OWLv2 detector (64 px input, 16 px patches: a 4x4 grid) with a locally trained tokenizer."""
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    return _save_owlv2(folder, seed, layers, {**layers, "image_size": 64, "patch_size": 16}, vocab_size=None)


def build_owlv2_base(folder: Path, seed: int = 0, device: str = "cpu") -> Path:
    """google/owlv2-base-patch16-ensemble's architecture (960 px, 16 px patches) with random weights, for benchmarks."""
    return _save_owlv2(folder, seed, {}, {"image_size": 960, "patch_size": 16}, vocab_size=49408, device=device)


def _save_owlv2(folder: Path, seed: int, text: dict[str, Any], vision: dict[str, Any], vocab_size: int | None,
                device: str = "cpu") -> Path:
    """An `Owlv2ForObjectDetection` from sub-config overrides, saved with an `Owlv2Processor`.

    OWLv2's text tower pools at the largest token id, as CLIP's vocabulary puts end-of-text last: the end token
    is added after training so it gets the last id, and pad is id 0 (the model reads a leading 0 as an empty
    query). `AutoProcessor` and `Owlv2ForObjectDetection` load the folder as they would a hub snapshot.
    """
    import torch
    from tokenizers import processors
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(seed)
    backend = _train_tokenizer(["<pad>", "<bos>", "<unk>"], add_eos=None).backend_tokenizer
    backend.add_special_tokens(["<eos>"])
    bos, eos = backend.token_to_id("<bos>"), backend.token_to_id("<eos>")
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": bos, "eos_token_id": eos}
    config = Owlv2Config(
        text_config={**text, "vocab_size": vocab_size or len(tokenizer), "max_position_embeddings": 16, **ids},
        vision_config=vision,
        # the class head compares queries in the text tower's width
        projection_dim=int(text.get("hidden_size", 512)),
    )
    folder.mkdir(parents=True, exist_ok=True)
    materialise(Owlv2ForObjectDetection, config, device).save_pretrained(folder)
    image_processor = Owlv2ImageProcessor(size={"height": vision["image_size"], "width": vision["image_size"]})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


TINY_YOLO_NAMES = ["person", "car", "cone", "barrier", "construction sign"]


def build_tiny_yolo(folder: Path, seed: int = 0) -> Path:
    """A YOLO11 detector from the packaged yaml, narrowed to 1/8 width, with roadwork class names; a `.pt` file.

    The yaml is copied with a single scale `n` of width 0.125, so the file name (`...yolo11n.yaml`) selects it and
    the checkpoint stays under 1 MB; `YOLO(path)` loads the saved `.pt` without any download.
    """
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    import ultralytics
    import yaml
    from ultralytics import YOLO

    torch.manual_seed(seed)
    spec = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/11/yolo11.yaml").read_text())
    spec["nc"] = len(TINY_YOLO_NAMES)
    spec["scales"] = {"n": [0.33, 0.125, 256]}
    folder.mkdir(parents=True, exist_ok=True)
    yaml_path = folder / "roadwork-yolo11n.yaml"
    yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    model = YOLO(str(yaml_path))
    network: Any = model.model
    network.names = dict(enumerate(TINY_YOLO_NAMES))
    weights = folder / "tiny-yolo.pt"
    model.save(str(weights))
    return weights


def build_yolo11n(folder: Path, seed: int = 0) -> Path:
    """A real-size YOLO11n (COCO's 80 classes) with random weights, from the packaged yaml, for benchmarks."""
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model = YOLO("yolo11n.yaml")
    weights = folder / "yolo11n.pt"
    model.save(str(weights))
    return weights


_QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_vlm(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen2-VL (1-block vision tower) with a local tokenizer in which "Yes"/"No" are single tokens.

    Saved with a Qwen2-VL processor (image processor capped at 16 merged patches, video processor, chat template),
    so `AutoProcessor` and `AutoModelForImageTextToText` load the folder like a hub snapshot.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    torch.manual_seed(seed)
    tokenizer = _train_tokenizer(_QWEN_SPECIAL, add_eos=None)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    for word in ("Yes", "No", " Yes", " No", "yes", "no"):
        if len(tokenizer.tokenize(word)) != 1:
            raise RuntimeError(f"tiny VLM tokenizer splits {word!r}; the yes/no readout needs single tokens")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_SPECIAL}
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=_QWEN_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 1024,
            # head_dim 16 -> 8 rotary frequencies, split over (time, height, width) positions
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    folder.mkdir(parents=True, exist_ok=True)
    Qwen2VLForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# --- SDXL (sn72-synth) ----------------------------------------------------------------------------------------------

# SDXL's scheduler as stabilityai/stable-diffusion-xl-base-1.0 ships it (scheduler/scheduler_config.json).
SDXL_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
                  "timestep_spacing": "leading", "num_train_timesteps": 1000, "prediction_type": "epsilon"}


def assemble_sdxl(unet: dict[str, Any], vae: dict[str, Any], text: dict[str, Any], text_2: dict[str, Any],
                  device: str = "cpu", seed: int = 0) -> Any:
    """A `StableDiffusionXLPipeline` with random weights from four configs and a locally trained tokenizer.

    Both text towers share one tokenizer (SDXL's two differ only in padding); vocab, end token and length are
    filled in from it. bfloat16 on CUDA, float32 on the CPU, like `materialise`.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    from sn72_tools.synth import prompts

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    # The prompts' own words (and no import of the cascade's option models: the GPU bench runs without pydantic).
    words = [*prompts.SCENES, *prompts.TIMES, *prompts.WEATHER, *prompts.CAMERAS, *prompts.ROADWORK_OBJECTS]
    tokenizer = _train_tokenizer(specials, add_eos="<eos>", corpus=words * 8)
    tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token = specials
    tokenizer.model_max_length = 77  # what the pipeline pads and truncates to, as with CLIP's tokenizers
    ids = {"vocab_size": max(len(tokenizer), text.get("vocab_size", 0)), "max_position_embeddings": 77,
           "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        parts: dict[str, Any] = {
            "unet": UNet2DConditionModel(**unet),
            "vae": AutoencoderKL(**vae),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**{**text, **ids})),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**{**text_2, **ids})),
        }
    for model in parts.values():
        (model.to(dtype) if dtype != torch.float32 else model).eval()
    return StableDiffusionXLPipeline(**parts, tokenizer=tokenizer, tokenizer_2=tokenizer,
                                     scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER))


def tiny_sdxl_configs() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """UNet, VAE and the two text towers' configs of the tiny SDXL (`assemble_sdxl`'s arguments).

    The VAE quarters each side (64 px -> 16 latent); the UNet's added conditioning is six time ids of 8 plus the
    pooled text (16): 64 inputs; its cross attention reads both towers' states: 16 + 16.
    """
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "projection_dim": 16}
    unet = {"block_out_channels": (16, 32), "layers_per_block": 1, "sample_size": 16, "in_channels": 4,
            "out_channels": 4, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": (2, 4),
            "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
            "transformer_layers_per_block": (1, 1), "projection_class_embeddings_input_dim": 6 * 8 + 16,
            "cross_attention_dim": 32, "norm_num_groups": 8}
    vae = {"block_out_channels": (8, 8, 16), "in_channels": 3, "out_channels": 3, "latent_channels": 4,
           "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3,
           "norm_num_groups": 8, "sample_size": 64}
    return unet, vae, text, text


def build_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """A tiny SDXL pipeline (two-block UNet, three-block VAE, 1-layer text towers), saved like a hub snapshot.

    `StableDiffusionXLPipeline.from_pretrained(folder)` and `StableDiffusionXLImg2ImgPipeline.from_pretrained(folder)`
    load it as they load stabilityai/stable-diffusion-xl-base-1.0.
    """
    pipeline = assemble_sdxl(*tiny_sdxl_configs(), seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(folder)
    return folder


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "tiny-vit": build_tiny_vit,
    "small-cnn": build_small_cnn,
    "tiny-clip": build_tiny_clip,
    "tiny-siglip": build_tiny_siglip,
    "tiny-siglip2": build_tiny_siglip2,
    "tiny-yolo": build_tiny_yolo,
    "tiny-owlv2": build_tiny_owlv2,
    "tiny-vlm": build_tiny_vlm,
}
