"""VLM expert through transformers: one forward pass per batch, P(yes) from the next-token distribution.

Any `AutoModelForImageTextToText` checkpoint with a chat template (Qwen2-VL/2.5-VL/3-VL, SmolVLM, ...). The
question and the image go through the model's own chat template once per batch; the prompts are left-padded so
every row's last position is where the answer's first token would be generated. From the logits there we take
the log-softmax over the whole vocabulary and read P(yes) with `vlm_common.yes_no_probability` over the token
ids of the configured yes/no strings; restricted to those ids this is exactly the softmax over yes and no ids.
Nothing is generated, so a batch costs one prefill.

This backend is for small VLMs and tests; large ones belong on vLLM (`vlm_vllm`), which batches continuously
and caches the shared prompt prefix.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from loguru import logger

from cascade.experts.base import ExpertError, parameter_bytes, torch_dtype
from cascade.experts.vlm_common import (
    TokenLogprob,
    VLMExpert,
    YesNoReader,
    YesNoVocabulary,
    build_prompt,
    to_pil_within,
    yes_no_token_ids,
)


class TransformersVLMExpert(VLMExpert):
    """A transformers VLM asked `options.question`; see the module docstring."""

    def load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.dtype = torch_dtype(self.config.dtype, self.device)
        try:
            processor = AutoProcessor.from_pretrained(self.config.model)
            model: Any = AutoModelForImageTextToText.from_pretrained(self.config.model, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise ExpertError(f"expert {self.name}: cannot load {self.config.model!r}: {exc}") from exc
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            raise ExpertError(f"expert {self.name}: the processor of {self.config.model!r} has no tokenizer")
        # Left padding: the last position of every row is then the answer position.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.processor = processor
        self.model = model.to(self.device).eval()
        try:
            self.prompt = build_prompt(processor, self.options.question)
        except ValueError as exc:
            raise ExpertError(f"expert {self.name}: {exc}") from exc
        self.yes_ids, self.no_ids = yes_no_token_ids(tokenizer, self.options.yes_tokens, self.options.no_tokens)
        self.ids = torch.tensor(self.yes_ids + self.no_ids, dtype=torch.long, device=self.device)
        vocab = YesNoVocabulary.from_options(
            self.options.yes_tokens, self.options.no_tokens, yes_ids=self.yes_ids, no_ids=self.no_ids
        )
        # The full distribution is known here, so an absent side has no mass (not a top-k list).
        self.reader = YesNoReader(self.name, vocab, truncated=False)
        self.keep_last_only = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        logger.info(
            "expert {}: {} yes ids {} no ids {}, images <= {} px",
            self.name,
            type(self.model).__name__,
            self.yes_ids,
            self.no_ids,
            self.options.max_pixels,
        )

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        pil_images = [to_pil_within(image, self.options.max_pixels) for image in images]
        inputs = self.processor(
            text=[self.prompt] * len(pil_images), images=pil_images, padding=True, return_tensors="pt"
        )
        batch = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            batch[key] = value
        extra = {"logits_to_keep": 1} if self.keep_last_only else {}
        logits = self.model(**batch, use_cache=False, **extra).logits[:, -1, :].float()
        if logits.shape[0] != len(images):
            raise ExpertError(f"expert {self.name}: {logits.shape[0]} answer rows for {len(images)} images")
        chosen = torch.log_softmax(logits, dim=-1).index_select(1, self.ids).cpu().tolist()
        token_ids = self.yes_ids + self.no_ids
        return [
            self.reader.probability([TokenLogprob(lp, token_id=i) for lp, i in zip(row, token_ids, strict=True)])
            for row in chosen
        ]

    def memory_bytes(self) -> int:
        return parameter_bytes(self.model)

    def close(self) -> None:
        self.model = None
