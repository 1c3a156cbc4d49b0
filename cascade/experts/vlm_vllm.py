"""VLM expert on vLLM in process (`AsyncLLM`): continuous batching, prefix caching, one answer token per image.

Each image is one `generate()` request (a unique request id) with `max_tokens=1` and greedy sampling; the
requests of a batch are submitted together and vLLM batches them with whatever else is running. The shared
chat prompt (question and template) is identical for every image, so with prefix caching only the image
tokens are new work.

Reading the answer. Recent vLLM has `SamplingParams.logprob_token_ids`: "Specific token IDs to return logprobs
for ... useful for scoring tasks where you want to compare probabilities of specific label tokens"
(vllm/sampling_params.py; https://docs.vllm.ai/en/latest/api/vllm/sampling_params/). When the installed vLLM
has it, we ask for exactly the yes/no token ids, so both sides are always present and the pooling is exact.
Older vLLM only returns the top-k (`logprobs=options.top_logprobs`), and a side missing from the top k is
estimated as `vlm_common` describes. Either way the answer is read from `outputs[0].logprobs[0]`, a dict
token id -> Logprob(logprob, decoded_token), never from generated text.

At the deadline, requests still running are aborted (`engine.abort(request_id)`) and the batch fails with
`TimeoutError`. vLLM is imported inside `load()`: it is an optional extra (`pip install -e '.[vllm]'`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from loguru import logger

from cascade.experts.base import ExpertError
from cascade.experts.vlm_common import (
    TokenLogprob,
    VLMExpert,
    YesNoReader,
    YesNoVocabulary,
    build_prompt,
    to_pil_within,
    yes_no_token_ids,
)

INSTALL_HINT = "pip install -e '.[vllm]'"


def engine_kwargs(model: str, dtype: str, options: Any, max_num_seqs: int) -> dict[str, Any]:
    """Keyword arguments of `AsyncEngineArgs`: one image per prompt, images capped at `max_pixels`."""
    return {
        "model": model,
        "dtype": dtype,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "max_model_len": options.max_model_len,
        "enable_prefix_caching": options.enable_prefix_caching,
        "limit_mm_per_prompt": {"image": 1},
        "mm_processor_kwargs": {"max_pixels": options.max_pixels},
        "max_num_seqs": max_num_seqs,
    }


def sampling_kwargs(top_logprobs: int, token_ids: Sequence[int] | None) -> dict[str, Any]:
    """Keyword arguments of `SamplingParams` for a one-token greedy answer with the logprobs we read.

    With `token_ids` (vLLM's `logprob_token_ids`), the logprobs of exactly those ids come back and no top-k is
    needed (as vLLM's own OpenAI server does, `logprobs` is then left unset); without, the top `top_logprobs`.
    """
    params: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "detokenize": True}
    if token_ids:
        params["logprobs"] = None
        params["logprob_token_ids"] = list(token_ids)
    else:
        params["logprobs"] = top_logprobs
    return params


def build_request(prompt: str, image: Any) -> dict[str, Any]:
    """The prompt of one `generate()` call: the chat-formatted text and its one image."""
    return {"prompt": prompt, "multi_modal_data": {"image": image}}


def output_entries(output: Any) -> list[TokenLogprob]:
    """The candidates of the first generated position of a vLLM `RequestOutput`."""
    completions = getattr(output, "outputs", None)
    if not completions:
        raise ExpertError(f"vLLM output for request {getattr(output, 'request_id', '?')} has no completion")
    positions = completions[0].logprobs
    if not positions:
        raise ExpertError(f"vLLM output for request {getattr(output, 'request_id', '?')} carries no logprobs")
    first = positions[0]
    if not isinstance(first, dict):
        raise ExpertError(f"unexpected vLLM logprobs row {type(first).__name__} (flat_logprobs must stay off)")
    return [
        TokenLogprob(float(item.logprob), token=getattr(item, "decoded_token", None), token_id=int(token_id))
        for token_id, item in first.items()
    ]


def parse_output(output: Any, reader: YesNoReader) -> float:
    """P(yes) of one finished request."""
    return reader.probability(output_entries(output))


@contextlib.contextmanager
def visible_device(device: str) -> Iterator[None]:
    """Pin the engine's worker to `cuda:N` while it starts.

    NOTE: vLLM picks its GPU from CUDA_VISIBLE_DEVICES in the worker process it spawns, so the variable is set
    for the duration of engine creation and restored after. CUDA is initialised in this process first so that
    our own device numbering cannot change.
    """
    if not device.startswith("cuda:"):
        yield
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.init()
    index = int(device.split(":", 1)[1])
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [v.strip() for v in previous.split(",")] if previous else None
    if visible is not None and index >= len(visible):
        raise ExpertError(f"device {device} is not among CUDA_VISIBLE_DEVICES={previous}")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[index] if visible is not None else str(index)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


class VLLMExpert(VLMExpert):
    """A VLM on an in-process vLLM `AsyncLLM`; see the module docstring."""

    is_async = True

    def __init__(self, config: Any, device: str) -> None:
        super().__init__(config, device)
        self.engine: Any = None
        self._background: set[asyncio.Task[Any]] = set()

    def load(self) -> None:
        try:
            from vllm import SamplingParams
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ExpertError(f"expert {self.name}: backend vlm_vllm needs vLLM ({INSTALL_HINT}): {exc}") from exc
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(self.config.model)
            self.prompt = build_prompt(processor, self.options.question)
        except (OSError, ValueError) as exc:
            raise ExpertError(f"expert {self.name}: cannot prepare {self.config.model!r}: {exc}") from exc
        tokenizer = getattr(processor, "tokenizer", processor)
        yes_ids, no_ids = yes_no_token_ids(tokenizer, self.options.yes_tokens, self.options.no_tokens)
        vocab = YesNoVocabulary.from_options(self.options.yes_tokens, self.options.no_tokens, yes_ids, no_ids)
        try:
            self.sampling = SamplingParams(**sampling_kwargs(self.options.top_logprobs, yes_ids + no_ids))
            exact = True
        except TypeError:  # a vLLM without logprob_token_ids
            self.sampling = SamplingParams(**sampling_kwargs(self.options.top_logprobs, None))
            exact = False
        self.reader = YesNoReader(self.name, vocab, truncated=not exact)
        kwargs = engine_kwargs(self.config.model, self.config.dtype, self.options, self.config.max_batch)
        args = AsyncEngineArgs(**kwargs)
        with visible_device(self.device):
            self.engine = AsyncLLM.from_engine_args(args)
        logger.info(
            "expert {}: vLLM engine for {} on {}, answer read from {}",
            self.name,
            self.config.model,
            self.device,
            f"logprob_token_ids {yes_ids + no_ids}" if exact else f"top-{self.options.top_logprobs} logprobs",
        )

    async def _generate(self, request_id: str, image: Any) -> Any:
        final = None
        async for output in self.engine.generate(build_request(self.prompt, image), self.sampling, request_id):
            final = output
        if final is None:
            raise ExpertError(f"expert {self.name}: vLLM returned nothing for request {request_id}")
        return final

    def _abort(self, request_ids: Sequence[str]) -> None:
        """Ask the engine to drop requests, without waiting past the deadline for it to confirm."""
        for request_id in request_ids:
            result = self.engine.abort(request_id)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def predict_async(self, images: Sequence[np.ndarray], deadline_s: float) -> list[float]:
        if self.engine is None:
            raise ExpertError(f"expert {self.name} is not loaded")
        if deadline_s - time.monotonic() <= 0:
            raise TimeoutError(f"expert {self.name}: deadline passed before the batch started")
        max_pixels = self.options.max_pixels
        pil_images = await asyncio.to_thread(lambda: [to_pil_within(image, max_pixels) for image in images])
        request_ids = [f"{self.name}-{uuid.uuid4().hex}" for _ in pil_images]
        pairs = list(zip(request_ids, pil_images, strict=True))
        tasks = [asyncio.create_task(self._generate(request_id, image)) for request_id, image in pairs]
        try:
            async with asyncio.timeout(max(0.0, deadline_s - time.monotonic())):
                outputs = await asyncio.gather(*tasks)
        except TimeoutError:
            unfinished = [
                request_id
                for request_id, task in zip(request_ids, tasks, strict=True)
                if not task.done() or task.cancelled()
            ]
            for task in tasks:
                task.cancel()
            self._abort(unfinished)
            raise TimeoutError(
                f"expert {self.name}: deadline reached with {len(unfinished)} of {len(tasks)} requests running"
            ) from None
        except BaseException:
            for task in tasks:
                task.cancel()
            self._abort([rid for rid, task in zip(request_ids, tasks, strict=True) if not task.done()])
            raise
        return [parse_output(output, self.reader) for output in outputs]

    def memory_bytes(self) -> int:
        """The share of the GPU that vLLM reserves up front (weights, activations and KV cache)."""
        if not self.device.startswith("cuda"):
            return 0
        import torch

        index = int(self.device.split(":", 1)[1]) if ":" in self.device else 0
        total = torch.cuda.get_device_properties(index).total_memory
        return int(total * self.options.gpu_memory_utilization)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
