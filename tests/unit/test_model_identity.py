"""Models named by content: the same bytes under another path are the same model; other bytes under the same
name, size and modification time are another (the eval cache keyed on name/size/mtime served stale outputs)."""

from __future__ import annotations

import os
from pathlib import Path

from cascade.model_identity import content_identity
from sn72_tools.evaluation.record import model_identity
from tests.factories.engine import expert_config


def test_other_weights_behind_the_same_name_size_and_time_are_another_model(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"A" * 1024)
    (folder / "config.json").write_text("{}")
    stamp = weights.stat().st_mtime_ns
    before = (content_identity(str(folder)), model_identity(expert_config("m", model=str(folder))))
    weights.write_bytes(b"B" * 1024)  # same size
    os.utime(weights, ns=(stamp, stamp))  # same time
    after = (content_identity(str(folder)), model_identity(expert_config("m", model=str(folder))))
    assert before[0] != after[0] and before[1] != after[1]
    (folder / "README.md").write_text("a card describes; it does not answer")
    assert content_identity(str(folder)) == after[0]
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    assert content_identity(str(moved)) == after[0]
    assert content_identity("org/not-downloaded") == "name:org/not-downloaded"
