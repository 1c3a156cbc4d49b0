"""VLM expert on a remote OpenAI-compatible server (`vllm serve`), asked for one token with its top logprobs.

Each image is one POST {base_url}/chat/completions: the image as a JPEG data URL and the question in one user
turn, `max_tokens=1`, `temperature=0`, `logprobs=true`, `top_logprobs=N`. P(yes) is read from
`choices[0].logprobs.content[0].top_logprobs` (a list of {token, logprob}) by `vlm_common`; a side absent from
the top N is estimated as described there. The requests of a batch go out concurrently over one keep-alive
session, so the server batches them; at the deadline they are cancelled (closing a connection makes vLLM's
server abort that request) and the batch fails with `TimeoutError`. HTTP errors become `ExpertError` with the
status and the start of the body.

JPEG encoding runs on a worker thread: the event loop that calls us also serves the axon.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import numpy as np
from loguru import logger

from cascade.experts.base import ExpertError
from cascade.experts.vlm_common import (
    TokenLogprob,
    VLMExpert,
    YesNoReader,
    YesNoVocabulary,
    to_pil_within,
    user_messages,
)

_BODY_EXCERPT = 300


def jpeg_data_url(image: np.ndarray, max_pixels: int, quality: int) -> str:
    """A `data:image/jpeg;base64,...` URL of the image, scaled down to at most `max_pixels`."""
    buffer = io.BytesIO()
    to_pil_within(image, max_pixels).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_request(model: str, question: str, image_url: str, top_logprobs: int) -> dict[str, Any]:
    """The JSON body of one chat-completions request asking for a single answer token and its top logprobs."""
    return {
        "model": model,
        "messages": user_messages(question, {"type": "image_url", "image_url": {"url": image_url}}),
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": top_logprobs,
    }


def response_entries(body: dict[str, Any]) -> list[TokenLogprob]:
    """The first answer position's candidates from a chat-completions response (the sampled token included)."""
    try:
        position = body["choices"][0]["logprobs"]["content"][0]
    except (KeyError, IndexError, TypeError) as exc:
        excerpt = json.dumps(body)[:_BODY_EXCERPT]
        raise ExpertError(f"response without choices[0].logprobs.content[0]: {excerpt}") from exc
    candidates = position.get("top_logprobs") or []
    entries = [TokenLogprob(float(item["logprob"]), token=item.get("token")) for item in candidates]
    sampled = position.get("token")
    if sampled is not None and "logprob" in position and all(entry.token != sampled for entry in entries):
        entries.append(TokenLogprob(float(position["logprob"]), token=sampled))
    return entries


class RemoteVLMExpert(VLMExpert):
    """A VLM behind an OpenAI-compatible HTTP server; see the module docstring."""

    is_async = True

    def __init__(self, config: Any, device: str) -> None:
        super().__init__(config, device)
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def load(self) -> None:
        if not self.options.base_url:
            raise ExpertError(
                f"expert {self.name}: backend vlm_remote needs options.base_url (e.g. http://host:8000/v1)"
            )
        self.url = self.options.base_url.rstrip("/") + "/chat/completions"
        self.served_model = self.options.served_model or self.config.model
        self.headers = {"Content-Type": "application/json"}
        if self.options.api_key_env:
            key = os.environ.get(self.options.api_key_env)
            if not key:
                raise ExpertError(f"expert {self.name}: environment variable {self.options.api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        vocab = YesNoVocabulary.from_options(self.options.yes_tokens, self.options.no_tokens)
        self.reader = YesNoReader(self.name, vocab, truncated=True)
        logger.info("expert {}: remote VLM {} at {}", self.name, self.served_model, self.url)

    def _session_for_loop(self) -> aiohttp.ClientSession:
        """One keep-alive session per event loop (a session cannot be shared across loops)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            connector = aiohttp.TCPConnector(limit=max(8, self.config.max_batch * 2))
            self._session = aiohttp.ClientSession(connector=connector, headers=self.headers)
            self._session_loop = loop
        return self._session

    async def _ask(self, session: aiohttp.ClientSession, image_url: str, timeout_s: float) -> float:
        body = chat_request(self.served_model, self.options.question, image_url, self.options.top_logprobs)
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with session.post(self.url, json=body, timeout=timeout) as response:
            text = await response.text()
            if response.status >= 400:
                raise ExpertError(
                    f"expert {self.name}: {self.url} answered HTTP {response.status}: {text[:_BODY_EXCERPT]}"
                )
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExpertError(f"expert {self.name}: response is not JSON: {text[:_BODY_EXCERPT]}") from exc
        return self.reader.probability(response_entries(parsed))

    async def predict_async(self, images: Sequence[np.ndarray], deadline_s: float) -> list[float]:
        if not hasattr(self, "url"):
            raise ExpertError(f"expert {self.name} is not loaded")
        if deadline_s - time.monotonic() <= 0:
            raise TimeoutError(f"expert {self.name}: deadline passed before the batch started")
        max_pixels, quality = self.options.max_pixels, self.options.jpeg_quality
        urls = await asyncio.to_thread(lambda: [jpeg_data_url(image, max_pixels, quality) for image in images])
        session = self._session_for_loop()
        remaining = deadline_s - time.monotonic()
        tasks = [asyncio.create_task(self._ask(session, url, max(0.001, remaining))) for url in urls]
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                return list(await asyncio.gather(*tasks))
        except TimeoutError:  # the deadline, or aiohttp's own timeout at the same instant
            raise TimeoutError(f"expert {self.name}: {self.url} missed the deadline for {len(urls)} images") from None
        except aiohttp.ClientError as exc:
            raise ExpertError(f"expert {self.name}: request to {self.url} failed: {exc}") from exc
        finally:
            # one failure fails the batch: the other requests are cancelled, which closes their connections
            for task in tasks:
                task.cancel()

    async def aclose(self) -> None:
        """Close the HTTP session from inside its event loop."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def close(self) -> None:
        session, loop = self._session, self._session_loop
        self._session = None
        if session is None or session.closed or loop is None or loop.is_closed():
            return
        if loop.is_running():
            loop.call_soon_threadsafe(lambda: loop.create_task(session.close()))
        else:
            loop.run_until_complete(session.close())
