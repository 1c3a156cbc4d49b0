"""OWLv2 open-vocabulary detector: text queries for roadwork objects become one image probability.

OWLv2 (`Owlv2ForObjectDetection`) scores every patch of the image's feature grid against every text query
and predicts a box per patch. We ask for roadwork objects by name (`options.queries`: traffic cone,
construction barrier, road work sign, ...), so no roadwork-trained detector is needed.

Queries are embedded ONCE at load: the text tower runs over the queries, the projected embeddings are kept
on the device, and the text tower is then released (40% of the weights; it never runs again). A
batch runs only the image side, through the model's own submodules, exactly as its `forward` would after
the text tower:

    image_embedder(pixels)                -> feature map (B, gh, gw, D)
    class_predictor(features, queries)    -> logits (B, gh*gw, Q)
    patch score = sigmoid(max over queries), as transformers' `post_process_object_detection` scores a box

Image probability: the `max_candidates` best patches get their boxes (box head + the grid's box bias, only
for those patches), patches below `options.conf` are dropped, class-agnostic NMS at `options.iou` merges the
patches that found the same object (neighbouring patches of one cone all predict it), and the survivors'
scores go through the detector backend's noisy-OR of the top-k with a floor (`detector.noisy_or`).

Input: OWLv2's processor pads an image to a square (bottom/right) and resizes it to 960 px; the default
resize mode here is therefore `letterbox`, which keeps the aspect the same way.
NOTE: the letterbox is centred and filled with the processor's mean, where OWLv2's processor pads at the
bottom/right (grey in the original, black in transformers 5): same scale and aspect, the content shifted by
half the border. Scores come from the class head, which does not use the position of a patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from loguru import logger
from torchvision.ops import nms

from cascade.decode import DecodeError
from cascade.experts.base import Expert, ExpertError, parameter_bytes, torch_dtype
from cascade.experts.detector import noisy_or
from cascade.experts.jpeg import materialise
from cascade.experts.preprocess import (
    Pixels,
    batch_tensor,
    choose_resize,
    preprocessing,
    processor_geometry,
    recorded_resize,
)


def image_score(
    scores: np.ndarray, boxes_xyxy: np.ndarray, conf: float, iou: float, top_k: int, floor: float
) -> float:
    """Noisy-OR of the top-k detections of one image that score at least `conf` and survive class-agnostic NMS."""
    keep = scores >= conf
    kept_scores, kept_boxes = scores[keep], boxes_xyxy[keep]
    if kept_scores.size and iou < 1.0:
        survivors = nms(torch.from_numpy(kept_boxes), torch.from_numpy(kept_scores), iou).numpy()
        kept_scores = kept_scores[survivors]
    return noisy_or(kept_scores.tolist(), top_k, floor)


def _pooled(output: Any) -> torch.Tensor:
    """`get_text_features` returns the projected embeddings (transformers 4) or an output holding them (5)."""
    pooled = output if isinstance(output, torch.Tensor) else getattr(output, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor):
        raise ExpertError(f"unexpected text feature output {type(output).__name__}: no embeddings tensor")
    return pooled


class OWLv2Expert(Expert):
    """An OWLv2 checkpoint (hub id or local folder) read through `image_score` (see the module docstring)."""

    decodes_jpeg = True

    def load(self) -> None:
        from transformers import AutoConfig, AutoProcessor, Owlv2ForObjectDetection

        self.dtype = torch_dtype(self.config.dtype, self.device)
        model: Any  # transformers' typing of `from_pretrained(...).to` confuses mypy
        try:
            # transformers would build a randomly initialised OWLv2 from another model's folder, with a warning
            model_type = getattr(AutoConfig.from_pretrained(self.config.model), "model_type", None)
            if model_type != "owlv2":
                raise ValueError(f"its config is model_type {model_type!r}, not 'owlv2'")
            processor = AutoProcessor.from_pretrained(self.config.model)
            model = Owlv2ForObjectDetection.from_pretrained(self.config.model, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise ExpertError(f"expert {self.name}: cannot load OWLv2 {self.config.model!r}: {exc}") from exc
        tokenizer = getattr(processor, "tokenizer", None)
        image_processor = getattr(processor, "image_processor", None)
        if tokenizer is None or image_processor is None:
            raise ExpertError(f"expert {self.name}: {self.config.model!r} has no OWLv2 processor (tokenizer + images)")
        self.model = model.to(self.device).eval()
        self.size_hw, self.mean, self.std, self.rescale = processor_geometry(image_processor, self.config.input_size)
        self.resize, source = choose_resize(self.name, self.config.resize, recorded_resize(self.config.model),
                                            "letterbox")
        self.preprocessing = preprocessing(self.size_hw, self.resize, source)  # logged once per expert by the engine
        vision = self.model.config.vision_config
        patch = int(vision.patch_size)
        if self.size_hw[0] % patch or self.size_hw[1] % patch:
            raise ExpertError(f"expert {self.name}: input {self.size_hw} is not a multiple of the patch size {patch}")
        # A grid other than the trained one needs interpolated position embeddings and its own box bias.
        self.interpolate = self.size_hw != (int(vision.image_size), int(vision.image_size))
        self.box_bias = self.model.compute_box_bias(self.size_hw[0] // patch, self.size_hw[1] // patch).to(self.device)
        self.query_embeds = self._embed_queries(tokenizer, list(self.options.queries))
        # NOTE: the text tower never runs again; releasing it frees 40% of the weights (63M of 155M in B/16).
        self.model.owlv2.text_model = None
        logger.info(
            "expert {}: OWLv2 {} with {} queries, input {} ({}), on {}",
            self.name,
            self.config.model,
            len(self.options.queries),
            self.size_hw,
            self.resize,
            self.device,
        )

    @torch.inference_mode()
    def _embed_queries(self, tokenizer: Any, queries: list[str]) -> torch.Tensor:
        """Q x D normalised query embeddings in the model's dtype, on the device (one text-tower pass).

        Padded to the text tower's full length as OWLv2's processor does; the tower pools at the end-of-text
        token (the largest id), which truncation keeps.
        """
        length = int(self.model.config.text_config.max_position_embeddings)
        tokens = tokenizer(queries, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        inputs = {key: tokens[key].to(self.device) for key in ("input_ids", "attention_mask") if key in tokens}
        embeds = _pooled(self.model.owlv2.get_text_features(**inputs))
        return embeds / torch.linalg.norm(embeds, dim=-1, keepdim=True)

    def patch_scores(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B x P float scores in [0, 1], B x P x D patch features) of a pixel batch against the queries."""
        feature_map, _ = self.model.image_embedder(pixel_values=pixels, interpolate_pos_encoding=self.interpolate)
        batch, grid_h, grid_w, dim = feature_map.shape
        features = feature_map.reshape(batch, grid_h * grid_w, dim)
        queries = self.query_embeds.unsqueeze(0).expand(batch, -1, -1)
        logits, _ = self.model.class_predictor(features, queries)
        return torch.sigmoid(logits.float().amax(dim=-1)), features

    def patch_boxes(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """B x K x 4 boxes (cx, cy, w, h in [0, 1]) of the patches `index` (B x K): the box head on those only."""
        chosen = torch.gather(features, 1, index.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
        return torch.sigmoid(self.model.box_head(chosen).float() + self.box_bias[index])

    @torch.inference_mode()
    def detections(self, images: Sequence[Pixels]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image, the `max_candidates` best patches: (scores, boxes as x0, y0, x1, y1 in [0, 1]), best first."""
        pixels = batch_tensor(
            images, self.size_hw, self.mean, self.std, self.device, self.dtype, self.rescale, resize=self.resize
        )
        scores, features = self.patch_scores(pixels)
        top_scores, index = scores.topk(min(self.options.max_candidates, scores.shape[1]), dim=1)
        centre, size = self.patch_boxes(features, index).split(2, dim=-1)
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
        scores_np, boxes_np = top_scores.cpu().numpy(), boxes.cpu().numpy()  # one device sync per batch
        return [(scores_np[i], boxes_np[i]) for i in range(len(images))]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float | DecodeError]:
        batch = materialise(images, self.device, self.jpeg_decoder)
        if not batch.images:
            return batch.answers([])
        o = self.options
        return batch.answers([image_score(s, b, o.conf, o.iou, o.top_k, o.floor)
                              for s, b in self.detections(batch.images)])

    def input_side(self) -> int | None:
        return max(self.size_hw)

    def memory_bytes(self) -> int:
        return parameter_bytes(self.model) + self.query_embeds.numel() * self.query_embeds.element_size()

    def close(self) -> None:
        self.model = None
