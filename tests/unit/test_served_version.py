"""The served version (cascade/served_version.py): it changes with what answers, and only with that."""

from __future__ import annotations

from pathlib import Path

from cascade.config import CascadeConfig, ExpertConfig, LevelConfig
from cascade.served_version import own_version, served


def cascade(model: Path | str, version: str = "v1", **fields: object) -> CascadeConfig:
    expert = ExpertConfig(name="a", backend="hf_classifier", model=str(model), **fields)  # type: ignore[arg-type]
    return CascadeConfig(version=version, levels=[LevelConfig(name="only", experts=[expert])])


def weights(folder: Path, content: bytes) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(content)
    (folder / "README.md").write_text(f"card {len(content)}")
    return folder


def test_new_weights_in_the_same_folder_change_the_version_and_a_new_card_does_not(tmp_path: Path):
    model = weights(tmp_path / "m", b"old weights")
    first = served(cascade(model)).version
    assert first.startswith("v1+id.") and len(first) == len("v1+id.") + 10
    assert served(cascade(model)).version == first  # stable
    (model / "README.md").write_text("a retrained card")  # describes the model, answers nothing
    assert served(cascade(model)).version == first
    weights(model, b"new weights")
    assert served(cascade(model)).version != first


def test_answer_settings_change_it_and_placement_does_not(tmp_path: Path):
    model = weights(tmp_path / "m", b"w")
    first = served(cascade(model)).version
    assert served(cascade(model, device="cpu", max_batch=4, max_wait_ms=9.0, memory_gb=3.0)).version == first
    assert served(cascade(model, weight=2.0)).version != first
    assert served(cascade(model, input_size=64)).version != first
    assert served(cascade(model, version="v2")).version.startswith("v2+id.")


def test_a_served_version_is_not_stamped_twice_and_may_pass_the_yamls_length(tmp_path: Path):
    once = served(cascade(weights(tmp_path / "m", b"w"), version="v" * 64))
    assert len(once.version) == 64 + len("+id.") + 10  # the YAML's bound is for what people write
    assert served(once).version == once.version and own_version(once.version) == "v" * 64


def test_a_hub_id_is_named_by_its_id(tmp_path: Path):
    assert served(cascade("org/model-a")).version != served(cascade("org/model-b")).version



def test_the_digest_cache_never_outlives_a_rewrite_that_keeps_size_and_modification_time(tmp_path: Path,
                                                                                          monkeypatch):
    import os
    import time

    from cascade import model_identity

    monkeypatch.setattr(model_identity, "_SETTLED_S", -1.0)  # every file counts as settled: its digest is cached
    model = weights(tmp_path / "m", b"old weights")
    past_s = time.time() - 60
    os.utime(model / "model.safetensors", (past_s, past_s))
    cached = len(model_identity._DIGESTS)
    first = model_identity.local_digest(model)
    assert len(model_identity._DIGESTS) == cached + 1 and model_identity.local_digest(model) == first
    time.sleep(0.05)  # past the kernel's timestamp tick
    weights(model, b"new weights")  # same size, and the modification time put back as it was
    os.utime(model / "model.safetensors", (past_s, past_s))
    assert model_identity.local_digest(model) != first  # the change time cannot be put back
