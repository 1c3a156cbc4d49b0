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

import pytest  # noqa: E402


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
