"""sn72-download-models (sn72_tools/download_models.py) offline: classification, patterns, dry run, failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade import model_sources as sources
from sn72_tools import download_models as dm

Source = sources.Source


def never_exists(_: str) -> bool:
    return False


@pytest.mark.parametrize(
    ("model", "backend", "source"),
    [
        ("natix-network-org/roadwork", "hf_classifier", Source.HUB),
        ("google/siglip2-so400m-patch14-384", "zero_shot", Source.HUB),
        ("google/owlv2-base-patch16-ensemble", "owlv2", Source.HUB),
        ("Qwen/Qwen3-VL-8B-Instruct", "vlm_vllm", Source.HUB),
        ("gpt2", "vlm_transformers", Source.HUB),  # a legacy id without an owner
        ("someone/roadwork-yolo", "detector", Source.HUB),
        ("yolo11m.pt", "detector", Source.ULTRALYTICS),
        ("https://example.org/w/best%20v2.pt", "detector", Source.ULTRALYTICS),
        ("/models/tiny-vit", "hf_classifier", Source.LOCAL),
        ("./models/tiny-vit", "hf_classifier", Source.LOCAL),
        ("../.demo/models/tiny-yolo/tiny-yolo.pt", "detector", Source.LOCAL),
        ("~/models/vit", "hf_classifier", Source.LOCAL),
        ("Qwen/Qwen3-VL-8B-Instruct", "vlm_remote", Source.REMOTE),
    ],
)
def test_classify(model: str, backend: str, source: object) -> None:
    assert sources.classify_model(model, backend, never_exists) == (source, "")


@pytest.mark.parametrize(
    ("model", "backend", "problem"),
    [
        ("https://example.org/model", "hf_classifier", "not a URL"),
        ("yolo11m", "detector", "needs a .pt weights name"),
        ("a/b/c", "zero_shot", "neither an existing path nor a hub id"),
        ("bad--name/x", "zero_shot", "neither an existing path nor a hub id"),
        ("owner/with space", "zero_shot", "neither an existing path nor a hub id"),
    ],
)
def test_classify_problems(model: str, backend: str, problem: str) -> None:
    source, text = sources.classify_model(model, backend, never_exists)
    assert source is Source.INVALID
    assert problem in text


def test_an_existing_relative_path_is_local_even_if_it_looks_like_a_hub_id() -> None:
    # transformers loads an existing folder before it asks the hub; the classification agrees.
    found = sources.classify_model("models/vit", "hf_classifier", lambda path: path == "models/vit")
    assert found == (Source.LOCAL, "")


def test_allow_patterns_fetch_one_weight_format() -> None:
    both = ["config.json", "model.safetensors", "pytorch_model.bin", "preprocessor_config.json"]
    patterns = dm.allow_patterns("hf_classifier", both)
    assert "*.safetensors" in patterns and "*.bin" not in patterns
    assert "*.json" in patterns and "*.model" in patterns  # configs and sentencepiece tokenizers
    assert "*.bin" in dm.allow_patterns("hf_classifier", ["config.json", "pytorch_model.bin"])
    assert {"*.safetensors", "*.bin"} <= set(dm.allow_patterns("zero_shot", None))
    assert dm.allow_patterns("detector", ["best.pt"]) == ["*.pt", "*.yaml", "*.json"]


def test_ultralytics_target_names_urls_by_their_file(tmp_path: Path) -> None:
    assert sources.ultralytics_target("yolo11m.pt", tmp_path) == tmp_path / "yolo11m.pt"
    assert sources.ultralytics_target("https://example.org/w/best%20v2.pt?x=1", tmp_path) == tmp_path / "best v2.pt"


def write_cascade(folder: Path) -> Path:
    """A cascade with one model of every source: a present folder, a missing one, hub, ultralytics, remote."""
    (folder / "models" / "vit").mkdir(parents=True)
    (folder / "models" / "vit" / "config.json").write_text("{}")
    (folder / "models" / "no-config").mkdir()
    path = folder / "cascade.yaml"
    path.write_text(
        """
version: test-1
levels:
  - name: cheap
    experts:
      - {name: local-vit, backend: hf_classifier, model: ./models/vit, device: cpu}
      - {name: hub-vit, backend: hf_classifier, model: natix-network-org/roadwork}
  - name: middle
    experts:
      - {name: missing, backend: zero_shot, model: ./models/absent}
      - {name: no-config, backend: zero_shot, model: ./models/no-config}
      - {name: yolo, backend: detector, model: yolo11m.pt}
  - name: last
    experts:
      - name: remote
        backend: vlm_remote
        model: Qwen/Qwen3-VL-8B-Instruct
        options: {base_url: "http://127.0.0.1:8000/v1"}
"""
    )
    return path


def test_dry_run_prints_the_plan_and_checks_local_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cascade = write_cascade(tmp_path)
    weights = tmp_path / "weights"
    code = dm.main(
        ["--cascade", str(cascade), "--dry-run", "--cache-dir", str(tmp_path / "hub"), "--weights-dir", str(weights)]
    )
    out = capsys.readouterr().out
    assert code == 1  # two local paths are broken
    assert "cascade version test-1" in out
    assert f"local-vit (hf_classifier): {tmp_path / 'models' / 'vit'} -> local, local, present" in out
    assert f"-> hub, into {tmp_path / 'hub' / 'models--natix-network-org--roadwork'}" in out
    assert f"error: local path {tmp_path / 'models' / 'absent'} does not exist" in out
    assert "has no config.json" in out
    assert f"yolo (detector): yolo11m.pt -> ultralytics, into {weights / 'yolo11m.pt'}" in out
    assert "remote (vlm_remote): Qwen/Qwen3-VL-8B-Instruct -> remote, served by the remote server" in out
    assert "summary: 6 model(s), 2 with errors" in out
    assert not weights.exists()  # a dry run writes nothing


def test_dry_run_of_a_clean_config_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text("{}")
    cascade = tmp_path / "c.yaml"
    cascade.write_text("levels: [{name: a, experts: [{name: v, backend: hf_classifier, model: ./vit, device: cpu}]}]\n")
    assert dm.main(["--cascade", str(cascade), "--dry-run"]) == 0
    assert "summary: 1 model(s), 0 with errors" in capsys.readouterr().out


def test_a_run_goes_on_after_failures_and_reports_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cascade = write_cascade(tmp_path)
    fetched: list[str] = []

    def fake_hub(ref: object, cache_dir: Path | None, token: str | None) -> str:
        fetched.append(f"hub:{ref.model}:{cache_dir}:{token}")  # type: ignore[attr-defined]
        raise OSError("hub unreachable")

    def fake_ultralytics(ref: object, weights_dir: Path) -> str:
        fetched.append(f"ultralytics:{ref.model}:{weights_dir}")  # type: ignore[attr-defined]
        return f"downloaded to {weights_dir / 'yolo11m.pt'}"

    monkeypatch.setattr(dm, "fetch_hub", fake_hub)
    monkeypatch.setattr(dm, "fetch_ultralytics", fake_ultralytics)
    monkeypatch.setenv("MY_TOKEN", "secret")
    code = dm.main(
        [
            "--cascade", str(cascade),
            "--cache-dir", str(tmp_path / "hub"),
            "--weights-dir", str(tmp_path / "w"),
            "--token-env", "MY_TOKEN",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert fetched == [
        f"hub:natix-network-org/roadwork:{tmp_path / 'hub'}:secret",
        f"ultralytics:yolo11m.pt:{tmp_path / 'w'}",
    ]
    assert "local, present" in out
    assert f"downloaded to {tmp_path / 'w' / 'yolo11m.pt'}" in out
    assert "summary: 3 of 6 model(s) ready, 3 failed" in out
    assert "failed: hub-vit (natix-network-org/roadwork): OSError: hub unreachable" in out
    assert "failed: missing (" in out and "does not exist" in out
    assert "failed: no-config (" in out


def test_the_same_model_is_fetched_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cascade = tmp_path / "c.yaml"
    cascade.write_text(
        "levels: [{name: a, experts: ["
        "{name: one, backend: hf_classifier, model: org/m}, {name: two, backend: hf_classifier, model: org/m}]}]\n"
    )
    calls: list[str] = []

    def fake_hub(ref: object, cache_dir: Path | None, token: str | None) -> str:
        calls.append(ref.model)  # type: ignore[attr-defined]
        return "downloaded"

    monkeypatch.setattr(dm, "fetch_hub", fake_hub)
    assert dm.main(["--cascade", str(cascade)]) == 0
    assert calls == ["org/m"]
    out = capsys.readouterr().out
    assert "same as above" in out
    assert "HF_HUB_OFFLINE=1" in out


def test_an_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cascade = tmp_path / "c.yaml"
    cascade.write_text("levels: [{name: a, experts: [{name: v, backend: nope, model: x}]}]\n")
    assert dm.main(["--cascade", str(cascade), "--dry-run"]) == 2
    assert "invalid cascade" in capsys.readouterr().err


def test_the_shipped_configs_classify_cleanly() -> None:
    from cascade.config import load_cascade

    root = Path(__file__).resolve().parents[2] / "config"
    refs = sources.plan_downloads(load_cascade(root / "cascade.production.yaml"))
    assert {ref.source for ref in refs} <= {Source.HUB, Source.ULTRALYTICS}
    assert all(ref.problem is None for ref in refs)
    owlv2 = [ref for ref in refs if ref.backend == "owlv2"]
    assert [(ref.model, ref.source) for ref in owlv2] == [("google/owlv2-base-patch16-ensemble", Source.HUB)]
    demo = sources.plan_downloads(load_cascade(root / "cascade.demo.yaml"))
    assert {ref.source for ref in demo} == {Source.LOCAL}


def test_fetch_hub_fetches_one_weight_format_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    seen: dict[str, object] = {}

    class FakeApi:
        def list_repo_files(self, repo_id: str, token: str | None = None) -> list[str]:
            return ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx"]

    def fake_snapshot(repo_id: str, **kwargs: object) -> str:
        seen.update(kwargs, repo_id=repo_id)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    ref = sources.ModelRef("vit", "hf_classifier", "org/vit", Source.HUB)
    assert dm.fetch_hub(ref, tmp_path / "hub", "tok") == f"downloaded to {tmp_path / 'snapshot'}"
    assert seen["repo_id"] == "org/vit"
    assert seen["cache_dir"] == tmp_path / "hub"
    assert seen["token"] == "tok"
    patterns = seen["allow_patterns"]
    assert isinstance(patterns, list) and "*.safetensors" in patterns and "*.bin" not in patterns
    assert "onnx/*" in seen["ignore_patterns"]  # type: ignore[operator]


def test_fetch_ultralytics_uses_its_release_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # attempt_download_asset is real; only its HTTP step is replaced, so the test checks how it is called.
    downloads = pytest.importorskip("ultralytics.utils.downloads")
    urls: list[str] = []

    def fake_download(url: str, file: Path, **_: object) -> Path:
        urls.append(url)
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        Path(file).write_bytes(b"weights")
        return Path(file)

    monkeypatch.setattr(downloads, "safe_download", fake_download)
    ref = sources.ModelRef("yolo", "detector", "yolo11m.pt", Source.ULTRALYTICS)
    weights = tmp_path / "weights"
    assert dm.fetch_ultralytics(ref, weights) == f"downloaded to {weights / 'yolo11m.pt'}"
    assert len(urls) == 1 and urls[0].startswith("https://github.com/ultralytics/assets/releases/download/")
    assert urls[0].endswith("/yolo11m.pt")
    assert dm.fetch_ultralytics(ref, weights) == f"present at {weights / 'yolo11m.pt'}"
    assert len(urls) == 1  # present files are not fetched again


def test_an_owlv2_expert_is_fetched_and_listed_like_any_transformers_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "owl-no-config").mkdir()
    cascade = tmp_path / "c.yaml"
    cascade.write_text(
        "levels: [{name: a, experts: ["
        "{name: owl, backend: owlv2, model: google/owlv2-base-patch16-ensemble},"
        "{name: owl-local, backend: owlv2, model: ./owl-no-config}]}]\n"
    )
    assert dm.main(["--cascade", str(cascade), "--dry-run", "--cache-dir", str(tmp_path / "hub")]) == 1
    out = capsys.readouterr().out
    hub = tmp_path / "hub" / "models--google--owlv2-base-patch16-ensemble"
    assert f"owl (owlv2): google/owlv2-base-patch16-ensemble -> hub, into {hub} (*.json, *.txt," in out
    assert "owl-local (owlv2)" in out and "has no config.json: it is not a saved transformers model" in out
    # the real run fetches its configs (the processor's and sn72_preprocess.json), CLIP's BPE files, one weight format
    import huggingface_hub

    seen: dict[str, object] = {}

    class FakeApi:
        def list_repo_files(self, repo_id: str, token: str | None = None) -> list[str]:
            return ["config.json", "preprocessor_config.json", "vocab.json", "merges.txt", "model.safetensors",
                    "pytorch_model.bin", "tf_model.h5"]

    def fake_snapshot(repo_id: str, **kwargs: object) -> str:
        seen.update(kwargs, repo_id=repo_id)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    ref = sources.ModelRef("owl", "owlv2", "google/owlv2-base-patch16-ensemble", Source.HUB)
    assert dm.fetch_hub(ref, None, None) == f"downloaded to {tmp_path / 'snapshot'}"
    patterns = seen["allow_patterns"]
    assert isinstance(patterns, list)
    assert {"*.json", "*.txt", "*.safetensors"} <= set(patterns) and "*.bin" not in patterns
    assert "*.h5" in seen["ignore_patterns"]  # type: ignore[operator]
