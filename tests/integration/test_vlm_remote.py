"""Remote VLM expert against a local aiohttp server speaking the OpenAI chat-completions format with logprobs."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from cascade.config import ExpertConfig
from cascade.experts.base import ExpertError
from cascade.experts.registry import build_expert
from cascade.experts.vlm_remote import RemoteVLMExpert, response_entries

SIZES = [(224, 224), (480, 640), (50, 900)]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def completion(top: list[tuple[str, float]]) -> dict[str, Any]:
    """A chat-completions response (vLLM's shape) whose first token has these top logprobs."""
    first = {"token": top[0][0], "logprob": top[0][1], "bytes": None}
    content = [{**first, "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top]}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "served",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": top[0][0]},
                "logprobs": {"content": content},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 80, "completion_tokens": 1, "total_tokens": 81},
    }


class Server:
    """A local server on 127.0.0.1 (a free port), started and stopped inside the test's event loop."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Server:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.handler)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self.runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def make_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def make_expert(base_url: str | None, **options: Any) -> RemoteVLMExpert:
    config = ExpertConfig(
        name="remote",
        backend="vlm_remote",
        model="Qwen/Qwen2.5-VL-7B-Instruct",
        options={"base_url": base_url, **options},
    )
    expert = build_expert(config, "cpu")
    assert isinstance(expert, RemoteVLMExpert) and expert.is_async
    expert.load()
    return expert


def test_requests_are_sent_concurrently_and_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_VLM_KEY", "secret")
    bodies: list[dict[str, Any]] = []
    headers: list[str | None] = []
    all_arrived = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        headers.append(request.headers.get("Authorization"))
        if len(bodies) == len(SIZES):
            all_arrived.set()
        await all_arrived.wait()  # sequential requests would never get here: the batch must be concurrent
        return web.json_response(completion([("Yes", math.log(0.6)), (" No", math.log(0.2)), ("The", -3.0)]))

    async def main() -> list[float]:
        async with Server(handler) as server:
            expert = make_expert(
                server.url, api_key_env="TEST_VLM_KEY", served_model="served", top_logprobs=5, max_pixels=64 * 64
            )
            try:
                return await expert.predict_async(make_images(SIZES), time.monotonic() + 10.0)
            finally:
                await expert.aclose()

    assert asyncio.run(main()) == pytest.approx([0.75] * len(SIZES))
    assert headers == ["Bearer secret"] * len(SIZES)
    for body in bodies:
        assert body["model"] == "served"
        assert body["max_tokens"] == 1 and body["temperature"] == 0
        assert body["logprobs"] is True and body["top_logprobs"] == 5
        image_part, text_part = body["messages"][0]["content"]
        assert body["messages"][0]["role"] == "user"
        assert text_part == {"type": "text", "text": make_expert("http://x/v1").options.question}
        url = image_part["image_url"]["url"]
        assert image_part["type"] == "image_url" and url.startswith("data:image/jpeg;base64,")
        jpeg = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert jpeg.format == "JPEG" and jpeg.width * jpeg.height <= 64 * 64


def test_http_errors_become_expert_errors_with_status_and_body() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=500, text="CUDA out of memory while decoding")

    async def main() -> None:
        async with Server(handler) as server:
            expert = make_expert(server.url)
            try:
                await expert.predict_async(make_images(SIZES[:2]), time.monotonic() + 10.0)
            finally:
                await expert.aclose()

    with pytest.raises(ExpertError, match=r"HTTP 500: CUDA out of memory"):
        asyncio.run(main())


def test_a_server_slower_than_the_deadline_is_abandoned_in_time() -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    async def main() -> tuple[BaseException | None, float]:
        async with Server(handler) as server:
            expert = make_expert(server.url)
            deadline = time.monotonic() + 0.3
            error: BaseException | None = None
            try:
                await expert.predict_async(make_images(SIZES), deadline)
            except TimeoutError as exc:
                error = exc
            late_s = time.monotonic() - deadline
            await expert.aclose()
            return error, late_s

    error, late_s = asyncio.run(main())
    assert isinstance(error, TimeoutError)
    assert late_s < 0.5  # the server never answers: only the deadline ends the wait


def test_a_response_without_logprobs_is_an_expert_error() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"choices": [{"message": {"content": "Yes"}, "logprobs": None}]})

    async def main() -> None:
        async with Server(handler) as server:
            expert = make_expert(server.url)
            try:
                await expert.predict_async(make_images(SIZES[:1]), time.monotonic() + 10.0)
            finally:
                await expert.aclose()

    with pytest.raises(ExpertError, match="logprobs"):
        asyncio.run(main())


def test_parsing_keeps_the_sampled_token_and_handles_missing_tokens() -> None:
    body = completion([("Yes", -0.2), ("The", -2.0)])
    entries = response_entries(body)
    assert [(e.token, e.logprob) for e in entries] == [("Yes", -0.2), ("The", -2.0)]
    body["choices"][0]["logprobs"]["content"][0]["top_logprobs"] = [{"token": "The", "logprob": -2.0}]
    assert [e.token for e in response_entries(body)] == ["The", "Yes"]  # the sampled token is a candidate too


def test_configuration_errors_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExpertError, match="base_url"):
        make_expert(None)
    monkeypatch.delenv("TEST_VLM_MISSING_KEY", raising=False)
    with pytest.raises(ExpertError, match="TEST_VLM_MISSING_KEY"):
        make_expert("http://127.0.0.1:9/v1", api_key_env="TEST_VLM_MISSING_KEY")
