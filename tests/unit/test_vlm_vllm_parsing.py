"""vLLM backend without vLLM: request construction, response parsing, deadline aborts on a fake engine."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cascade.config import ExpertConfig
from cascade.experts.base import ExpertError
from cascade.experts.registry import build_expert
from cascade.experts.vlm_common import YesNoReader, YesNoVocabulary
from cascade.experts.vlm_vllm import (
    VLLMExpert,
    build_request,
    engine_kwargs,
    output_entries,
    parse_output,
    sampling_kwargs,
    visible_device,
)

YES_IDS, NO_IDS = [9454, 9693], [2753, 912]


# Recorded shapes of vllm.outputs.RequestOutput / CompletionOutput / vllm.logprobs.Logprob (vLLM v1).
@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = "length"


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool = True
    prompt: str | None = None


def request_output(request_id: str, row: dict[int, Logprob]) -> RequestOutput:
    top = max(row, key=lambda token_id: row[token_id].logprob)
    completion = CompletionOutput(0, row[top].decoded_token or "", [top], row[top].logprob, [row])
    return RequestOutput(request_id, [completion])


def reader(truncated: bool = False) -> YesNoReader:
    vocab = YesNoVocabulary.from_options(["Yes", "yes"], ["No", "no"], YES_IDS, NO_IDS)
    return YesNoReader("vlm", vocab, truncated=truncated)


def make_config(**options: Any) -> ExpertConfig:
    return ExpertConfig(name="vlm", backend="vlm_vllm", model="Qwen/Qwen2.5-VL-3B-Instruct", options=options)


def test_sampling_asks_for_one_greedy_token_and_the_yes_no_ids() -> None:
    exact = sampling_kwargs(20, YES_IDS + NO_IDS)
    assert exact == {
        "max_tokens": 1,
        "temperature": 0.0,
        "detokenize": True,
        "logprobs": None,
        "logprob_token_ids": YES_IDS + NO_IDS,
    }
    fallback = sampling_kwargs(20, None)
    assert fallback["logprobs"] == 20 and "logprob_token_ids" not in fallback and fallback["max_tokens"] == 1


def test_engine_arguments_and_request() -> None:
    config = make_config(max_pixels=448 * 448, gpu_memory_utilization=0.4, max_model_len=2048)
    kwargs = engine_kwargs(config.model, config.dtype, config.typed_options(), config.max_batch)
    assert kwargs["model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and kwargs["dtype"] == "auto"
    assert kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert kwargs["mm_processor_kwargs"] == {"max_pixels": 448 * 448}
    assert kwargs["gpu_memory_utilization"] == 0.4 and kwargs["max_model_len"] == 2048
    assert kwargs["enable_prefix_caching"] is True and kwargs["max_num_seqs"] == config.max_batch
    image = Image.new("RGB", (8, 8))
    assert build_request("<prompt>", image) == {"prompt": "<prompt>", "multi_modal_data": {"image": image}}


def test_exact_token_logprobs_are_pooled() -> None:
    row = {
        9454: Logprob(math.log(0.5), 1, "Yes"),
        9693: Logprob(math.log(0.1), 3, "yes"),
        2753: Logprob(math.log(0.3), 2, "No"),
        912: Logprob(math.log(0.001), 40, "no"),
    }
    output = request_output("r1", row)
    entries = output_entries(output)
    assert {(e.token_id, e.token) for e in entries} == {(9454, "Yes"), (9693, "yes"), (2753, "No"), (912, "no")}
    assert parse_output(output, reader()) == pytest.approx(0.6 / 0.901)


def test_top_k_logprobs_with_other_tokens_and_a_missing_side() -> None:
    row = {
        9454: Logprob(math.log(0.7), 1, "Yes"),
        576: Logprob(math.log(0.2), 2, "The"),
        40: Logprob(math.log(0.05), 3, "I"),
    }
    assert parse_output(request_output("r2", row), reader(truncated=True)) == pytest.approx(0.7 / 0.75)
    unrelated = {576: Logprob(-0.1, 1, "The"), 40: Logprob(-2.5, 2, "I")}
    answers = reader(truncated=True)
    assert parse_output(request_output("r3", unrelated), answers) == 0.5
    assert answers.missing == 1


def test_malformed_outputs_are_expert_errors() -> None:
    with pytest.raises(ExpertError, match="no completion"):
        output_entries(RequestOutput("r", []))
    with pytest.raises(ExpertError, match="no logprobs"):
        output_entries(RequestOutput("r", [CompletionOutput(0, "Yes", [1], None, None)]))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_building_without_vllm_names_the_extra() -> None:
    with pytest.raises(ExpertError, match=r"pip install -e '\.\[vllm\]'"):
        build_expert(make_config(), "cuda:0")


def test_visible_device_pins_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with visible_device("cuda:1"):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with visible_device("cuda:2"):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with visible_device("cpu"):
        assert "CUDA_VISIBLE_DEVICES" not in os.environ


@dataclass
class FakeEngine:
    """AsyncLLM's generate/abort; answers when `release` is set (never, for a stuck engine)."""

    rows: dict[int, Logprob]
    release: asyncio.Event
    prompts: list[dict[str, Any]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def generate(self, prompt: dict[str, Any], sampling: Any, request_id: str) -> AsyncIterator[RequestOutput]:
        self.prompts.append(prompt)
        self.request_ids.append(request_id)
        self.started.set()
        await self.release.wait()
        yield request_output(request_id, self.rows)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


def loaded_expert(engine: FakeEngine) -> VLLMExpert:
    """A VLLMExpert as `load()` leaves it, with the fake engine in place of AsyncLLM."""
    expert = VLLMExpert(make_config(max_pixels=32 * 32), "cuda:0")
    expert.engine = engine
    expert.prompt = "<prompt>"
    expert.sampling = sampling_kwargs(20, YES_IDS + NO_IDS)
    expert.reader = reader()
    return expert


def images(n: int) -> list[np.ndarray]:
    return [np.zeros((48 + 10 * i, 64, 3), dtype=np.uint8) for i in range(n)]


def test_predict_async_sends_one_request_per_image_and_parses_them() -> None:
    async def main() -> tuple[list[float], FakeEngine]:
        release = asyncio.Event()
        release.set()
        engine = FakeEngine({9454: Logprob(math.log(0.3)), 2753: Logprob(math.log(0.1))}, release)
        result = await loaded_expert(engine).predict_async(images(3), time.monotonic() + 30.0)
        return result, engine

    result, engine = asyncio.run(main())
    assert result == pytest.approx([0.75] * 3)
    assert len(set(engine.request_ids)) == 3 and not engine.aborted
    for prompt in engine.prompts:
        image = prompt["multi_modal_data"]["image"]
        assert prompt["prompt"] == "<prompt>" and image.width * image.height <= 32 * 32


def test_requests_still_running_at_the_deadline_are_aborted() -> None:
    async def main() -> tuple[float, FakeEngine, BaseException | None]:
        engine = FakeEngine({}, asyncio.Event())  # never released
        expert = loaded_expert(engine)
        deadline = time.monotonic() + 0.2
        error: BaseException | None = None
        try:
            await expert.predict_async(images(2), deadline)
        except TimeoutError as exc:
            error = exc
        late_s = time.monotonic() - deadline
        await asyncio.sleep(0)  # let the fire-and-forget aborts run
        return late_s, engine, error

    late_s, engine, error = asyncio.run(main())
    assert isinstance(error, TimeoutError)
    assert late_s < 0.5  # the engine never answers: only the deadline ends the wait
    assert sorted(engine.aborted) == sorted(engine.request_ids) and len(engine.aborted) == 2


def test_a_deadline_already_past_fails_before_any_request() -> None:
    engine = FakeEngine({}, asyncio.Event())
    with pytest.raises(TimeoutError):
        asyncio.run(loaded_expert(engine).predict_async(images(1), time.monotonic() - 1.0))
    assert engine.request_ids == []
