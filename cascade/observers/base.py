"""The observer hook and the runner that shields requests from observers' failures."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from cascade.request import Job, Result


@dataclass(frozen=True)
class Finished:
    """A request that has been answered, as observers see it."""

    job: Job
    result: Result
    image_hash: str | None  # sha256 hex of the encoded image bytes (None: the payload did not decode)
    image_bytes: bytes | None  # the encoded image as received
    image_size: tuple[int, int] | None  # (width, height) as decoded, before any downscale
    cascade_version: str


class Observer(abc.ABC):
    """Sees finished requests. Called on the engine's loop thread: must return quickly."""

    name: str = "observer"

    @abc.abstractmethod
    def on_finished(self, finished: Finished) -> None:
        """Record one finished request (hand slow work to a thread of your own)."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Flush and release resources; called once when the engine stops."""


class ObserverRunner:
    """Calls every observer; an observer's exception is logged and counted, never felt by the request."""

    def __init__(self, observers: list[Observer] | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.observers: list[Observer] = list(observers or [])
        self.errors: dict[str, int] = {}
        self._on_error = on_error  # the engine's observer-errors counter
        self._lock = threading.Lock()

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def notify(self, finished: Finished) -> None:
        for observer in self.observers:
            try:
                observer.on_finished(finished)
            except Exception as exc:  # noqa: BLE001 - the contract: observers never fail a request
                with self._lock:
                    self.errors[observer.name] = self.errors.get(observer.name, 0) + 1
                if self._on_error is not None:
                    self._on_error(observer.name)
                logger.warning("observer {} failed: {!r}", observer.name, exc)

    def close(self) -> None:
        for observer in self.observers:
            try:
                observer.close()
            except Exception as exc:  # noqa: BLE001 - closing one must not stop closing the others
                logger.warning("observer {} failed to close: {!r}", observer.name, exc)
