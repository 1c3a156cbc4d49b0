"""The event loops: each kind runs on its own loop type, and a missing uvloop is a clear error."""

from __future__ import annotations

import asyncio
import sys

import pytest

from cascade.event_loop import new_event_loop, uvicorn_loop


def test_each_kind_runs_a_coroutine_on_its_own_loop_type():
    for kind in ("uvloop", "asyncio"):
        loop = new_event_loop(kind)
        try:
            assert loop.run_until_complete(asyncio.sleep(0, result=kind)) == kind
            assert type(loop).__module__.split(".")[0] == kind
        finally:
            loop.close()


def test_uvloop_missing_is_an_error_that_says_how_to_do_without_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets where it is not installed
    for make in (new_event_loop, uvicorn_loop):
        with pytest.raises(RuntimeError, match="event_loop: asyncio"):
            make("uvloop")
    assert uvicorn_loop("asyncio") == "asyncio"
