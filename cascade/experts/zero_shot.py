"""Zero-shot image-text expert: CLIP, SigLIP or SigLIP2 through transformers, roadwork prompts against the rest.

Scoring. Each prompt k gets the model's own logit for the image, l_k = exp(logit_scale) * cos(image, text_k)
(+ logit_bias for the SigLIP family), and

    P(roadwork) = sum_{k in positive} softmax(l)_k

i.e. the prompts compete for the image, CLIP's zero-shot classification rule. We use the softmax for SigLIP
too: its per-prompt sigmoid answers "does this caption match?" independently per prompt, which does not give
one normalised answer to "roadwork or not". SigLIP's bias is a single scalar shared by all prompts, so it
cancels in the softmax; it is applied anyway so the logits are the model's own. The positive share also
depends on how many prompts each side has: keep the sides balanced, and let calibration (temperature and bias
fitted on labelled data) absorb the rest.

Text embeddings are computed once at load; a batch costs one image-tower pass. Images are resized and
normalised on the expert's device (`preprocess.batch_tensor`), never by the CPU image processor. SigLIP2
NaFlex checkpoints take variable patch grids: each image keeps its aspect ratio within the checkpoint's
`max_num_patches` and is patchified here the way its processor does, with an attention mask over the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from loguru import logger

from cascade.config import ResizeMode
from cascade.decode import DecodeError
from cascade.experts.base import Expert, ExpertError, Stages, parameter_bytes, torch_dtype
from cascade.experts.jpeg import materialise
from cascade.experts.preprocess import (
    Pixels,
    Preprocessing,
    batch_tensor,
    choose_resize,
    preprocessing,
    processor_geometry,
    recorded_resize,
)


def _embeddings(output: Any) -> torch.Tensor:
    """The projected embeddings of `get_text_features`/`get_image_features`: a tensor in transformers 4, an
    output object whose `pooler_output` holds them in transformers 5."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise ExpertError(f"unexpected feature output {type(output).__name__}: no embeddings tensor")


def prompt_probabilities(logits: torch.Tensor, num_positive: int) -> torch.Tensor:
    """P(roadwork) per row: the softmax mass of the first `num_positive` prompt columns."""
    return torch.softmax(logits.float(), dim=-1)[:, :num_positive].sum(dim=-1).clamp(0.0, 1.0)


class ZeroShotExpert(Expert):
    """Image-text model scoring positive against negative prompts (see the module docstring)."""

    decodes_jpeg = True

    def load(self) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.dtype = torch_dtype(self.config.dtype, self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.config.model)
            image_processor = AutoImageProcessor.from_pretrained(self.config.model)
            model = AutoModel.from_pretrained(self.config.model, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise ExpertError(f"expert {self.name}: cannot load {self.config.model!r}: {exc}") from exc
        for method in ("get_text_features", "get_image_features"):
            if not hasattr(model, method):
                raise ExpertError(
                    f"expert {self.name}: {type(model).__name__} is not an image-text model (no {method}); "
                    "zero_shot needs a CLIP/SigLIP/SigLIP2 checkpoint"
                )
        self.model = model.to(self.device).eval()
        self.model_type = str(getattr(self.model.config, "model_type", ""))
        self.naflex = self.model_type == "siglip2"
        if self.naflex:
            self.patch_size = int(getattr(image_processor, "patch_size", 16))
            self.max_num_patches = int(getattr(image_processor, "max_num_patches", 256))
        self.size_hw, self.mean, self.std, self.rescale = processor_geometry(image_processor, self.config.input_size)
        self.resize, source = self._resize_mode()
        # logged once per expert by the engine
        if not self.naflex:
            self.preprocessing = preprocessing(self.size_hw, self.resize, source)
        elif self.config.input_size is not None:  # every image squashed onto one square patch grid
            side = max(self.patch_size, self.config.input_size // self.patch_size * self.patch_size)
            self.preprocessing = Preprocessing(f"{side}x{side}", "squash", "default")
        else:
            self.preprocessing = Preprocessing(f"<= {self.max_num_patches} patches of {self.patch_size}",
                                               "none: each image keeps its aspect (NaFlex)", "default")
        # Fixed-grid towers (CLIP, SigLIP) learned position embeddings for one size; another input size needs them
        # interpolated, which transformers does on request.
        vision_config = getattr(self.model.config, "vision_config", None)
        trained = getattr(vision_config, "image_size", None)
        self.interpolate = not self.naflex and trained is not None and self.size_hw != (trained, trained)
        prompts = [*self.options.positive_prompts, *self.options.negative_prompts]
        self.num_positive = len(self.options.positive_prompts)
        self.text_embeds = self._encode_text(tokenizer, prompts)
        self.logit_scale = self.model.logit_scale.detach().float().exp()
        bias = getattr(self.model, "logit_bias", None)
        self.logit_bias = bias.detach().float() if isinstance(bias, torch.Tensor) else None
        logger.info(
            "expert {}: {} with {} positive and {} negative prompts, input {}",
            self.name,
            self.model_type or type(self.model).__name__,
            self.num_positive,
            len(prompts) - self.num_positive,
            f"<= {self.max_num_patches} patches of {self.patch_size}" if self.naflex else self.size_hw,
        )

    def _resize_mode(self) -> tuple[ResizeMode, str]:
        """The mode and where it came from. NaFlex keeps each image's aspect on its own patch grid: a resize mode
        cannot apply there."""
        recorded = recorded_resize(self.config.model)
        if not self.naflex:
            return choose_resize(self.name, self.config.resize, recorded)
        if self.config.resize is not None:
            raise ExpertError(
                f"expert {self.name}: resize={self.config.resize!r} does not apply to a SigLIP2 NaFlex model, "
                "which keeps each image's aspect ratio; remove it"
            )
        if recorded not in (None, "squash"):
            logger.warning("expert {}: recorded resize {} ignored: NaFlex keeps image aspects", self.name, recorded)
        return "squash", "default"

    @torch.inference_mode()
    def _encode_text(self, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
        """Normalised prompt embeddings (float32, on the device), computed once.

        The SigLIP family (a model with `logit_bias`) was trained on text padded to the full context and pools
        the last position, so it is padded to `max_position_embeddings`; CLIP pools the end-of-text token and
        takes the shortest padding.
        """
        text_config = getattr(self.model.config, "text_config", self.model.config)
        if hasattr(self.model, "logit_bias"):
            length = int(getattr(text_config, "max_position_embeddings", 64))
            tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        else:
            length = int(getattr(text_config, "max_position_embeddings", 77))
            tokens = tokenizer(prompts, padding=True, max_length=length, truncation=True, return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in tokens.items() if key in ("input_ids", "attention_mask")}
        embeds = _embeddings(self.model.get_text_features(**inputs)).float()
        return embeds / embeds.norm(p=2, dim=-1, keepdim=True)

    def _naflex_inputs(self, images: Sequence[Pixels]) -> dict[str, torch.Tensor]:
        """SigLIP2 NaFlex inputs: per image an aspect-kept patch grid, patchified, padded to `max_num_patches`."""
        from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

        p, limit = self.patch_size, self.max_num_patches
        rows, masks, shapes = [], [], []
        for image in images:
            if self.config.input_size is not None:
                side = max(p, self.config.input_size // p * p)
                height, width = side, side
            else:
                source_hw = image.shape[1:] if isinstance(image, torch.Tensor) else image.shape[:2]
                height, width = get_image_size_for_max_num_patches(source_hw[0], source_hw[1], p, limit)
            pixels = batch_tensor([image], (height, width), self.mean, self.std, self.device, self.dtype, self.rescale)
            grid_h, grid_w = height // p, width // p
            # (1, C, H, W) -> (grid_h * grid_w, p * p * C), row-major patches with channels last, as the processor
            patches = pixels[0].reshape(3, grid_h, p, grid_w, p).permute(1, 3, 2, 4, 0).reshape(grid_h * grid_w, -1)
            count = patches.shape[0]
            if count > limit:
                raise ExpertError(f"expert {self.name}: input_size gives {count} patches > max_num_patches {limit}")
            padded = torch.zeros((limit, patches.shape[1]), dtype=patches.dtype, device=patches.device)
            padded[:count] = patches
            mask = torch.zeros(limit, dtype=torch.int32, device=patches.device)
            mask[:count] = 1
            rows.append(padded)
            masks.append(mask)
            shapes.append((grid_h, grid_w))
        return {
            "pixel_values": torch.stack(rows),
            "pixel_attention_mask": torch.stack(masks),
            "spatial_shapes": torch.tensor(shapes, dtype=torch.long, device=self.device),
        }

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float | DecodeError]:
        stages = Stages()
        batch = materialise(images, self.device, self.jpeg_decoder)
        stages.lap("decode")
        if not batch.images:
            return batch.answers([])
        if self.naflex:
            inputs: dict[str, Any] = self._naflex_inputs(batch.images)
        else:
            pixels = batch_tensor(
                batch.images, self.size_hw, self.mean, self.std, self.device, self.dtype, self.rescale,
                resize=self.resize,
            )
            inputs = {"pixel_values": pixels}
            if self.interpolate:
                inputs["interpolate_pos_encoding"] = True
        stages.lap("preprocess")
        image_embeds = _embeddings(self.model.get_image_features(**inputs)).float()
        image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
        logits = self.logit_scale * image_embeds @ self.text_embeds.t()
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return batch.answers(self.read_answers(prompt_probabilities(logits, self.num_positive), stages))

    def input_side(self) -> int | None:
        return None if self.naflex else max(self.size_hw)  # NaFlex keeps the native aspect and detail

    def memory_bytes(self) -> int:
        return parameter_bytes(self.model) + self.text_embeds.numel() * self.text_embeds.element_size()

    def close(self) -> None:
        self.model = None
