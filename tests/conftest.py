"""Test-wide environment: no hub, no internet, a throwaway HOME, CUDA-only tests skipped without CUDA."""

from __future__ import annotations

import os
import tempfile

# Before anything imports bittensor (it creates ~/.bittensor) or transformers (it may try the hub).
_HOME = tempfile.mkdtemp(prefix="sn72-test-home-")
os.environ["HOME"] = _HOME
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_log_sink_outlives_its_test():
    """A test that runs a tool's `main` in process (eval, train, promote, the miner's --check) leaves loguru writing
    to that test's captured stderr, which is closed once the test ends: every later log record, in any test, then
    printed a "Logging error" traceback, on whichever thread logged it (an engine's loop among them). Such a test's
    sinks are replaced by loguru's default one, on the process's stderr (still captured per test, at the fd)."""
    from loguru import logger

    before = set(logger._core.handlers)  # no public list of sinks
    yield
    if set(logger._core.handlers) != before:
        logger.remove()
        logger.add(sys.__stderr__)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
