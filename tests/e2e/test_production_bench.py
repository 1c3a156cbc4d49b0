"""The production-size benchmark at tiny size: the production cascade's tiny twins load through
the backends, `sn72-bench levels` and `sn72-bench traffic` (the real miner process, real dendrites) run end to end
and write every field, and the production-size builders describe the real checkpoints' architectures."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from cascade.config import load_cascade
from cascade.experts.registry import build_expert
from sn72_lab import bench, make_tiny_models
from sn72_lab.bench_levels import mixed_images
from sn72_lab.production_models import production_vlm_parts, siglip2_so400m_parts

ROOT = Path(__file__).resolve().parents[2]
TWIN = "cascade.bench-production-tiny.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.bench]


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    """The tiny twin cascade file in a folder laid out as the repository (config/ beside .bench/models/)."""
    root = tmp_path_factory.mktemp("prodbench")
    (root / "config").mkdir()
    shutil.copy(ROOT / "config" / TWIN, root / "config" / TWIN)
    assert make_tiny_models.main(["--out", str(root / ".bench" / "models"), "--production", "tiny"]) == 0
    return root / "config" / TWIN


def test_the_production_twins_load_through_the_backends(twin):
    cascade = load_cascade(twin)
    production = load_cascade(ROOT / "config" / "cascade.bench-production.yaml")
    # the twin is the production bench cascade with other models: same levels, experts, backends and options
    assert [[(e.name, e.backend, e.options) for e in level.experts] for level in cascade.levels] == \
           [[(e.name, e.backend, e.options) for e in level.experts] for level in production.levels]
    images = mixed_images(4)
    for config in cascade.experts():
        expert = build_expert(config, "cpu")
        expert.load()
        answers = expert.predict_batch(images)
        assert len(answers) == 4 and all(0.0 <= p <= 1.0 for p in answers), config.name
        assert expert.memory_bytes() > 0
        expert.close()
    vlm_config = json.loads((Path(cascade.levels[-1].experts[0].model) / "config.json").read_text())
    assert vlm_config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    siglip = json.loads((Path(cascade.levels[1].experts[0].model) / "config.json").read_text())
    assert siglip["model_type"] == "siglip"  # how transformers loads the fixed-resolution SigLIP2 checkpoints


@pytest.mark.parametrize("family, billions", [("qwen3_vl", 8.77), ("qwen2_5_vl", 8.29)])
def test_the_production_vlm_has_the_checkpoint_architecture(family, billions):
    import torch

    parts = production_vlm_parts(family=family)
    with torch.device("meta"):  # the architecture without allocating 17 GB
        model = parts.model_class._from_config(parts.config, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)
    text = parts.config.text_config
    assert text.vocab_size == (151_936 if family == "qwen3_vl" else 152_064)
    tokenizer = parts.beside[0].tokenizer
    assert all(len(tokenizer.tokenize(word)) == 1 for word in ("Yes", "No", " Yes", " No"))


def test_siglip2_so400m_has_the_checkpoint_architecture():
    import torch

    parts = siglip2_so400m_parts()
    with torch.device("meta"):
        model = parts.model_class._from_config(parts.config, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(1.136, abs=0.005)
    vision, text = parts.config.vision_config, parts.config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers,
            vision.num_attention_heads, vision.intermediate_size) == (384, 14, 1152, 27, 16, 4304)
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers) == (256_000, 1152, 27)


def test_levels_scenario_reports_every_level_and_expert(twin, tmp_path, capsys):
    out = tmp_path / "levels.json"
    assert bench.main(["levels", "--cascade", str(twin), "--reps", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["levels"]) == ["1", "2", "3"]
    assert [list(level["experts"]) for level in report["levels"].values()] == [["natix-vit"], ["siglip2", "owlv2"],
                                                                               ["qwen3-vl"]]
    for level in report["levels"].values():
        for figures in (level["batch1"], level["batch_max"]):
            assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
        for row in level["experts"].values():
            assert row["batch1"]["p50_ms"] > 0 and row[f"batch{row['max_batch']}"]["images_per_s"] > 0
            assert row["max_batch"] == 8 and row["load_s"] > 0
            memory = row["memory"]
            assert memory["parameters_gb"] > 0 and memory["memory_gb"] == 0.1
            assert memory["held_gb"] is None and memory["peak_gb"] is None  # CPU: torch's CUDA counters only
            assert memory["within_memory_gb"] is True  # tiny models are far below 0.1 GB
    assert "| 2 | **open-vocabulary: all at once** |" in capsys.readouterr().out


def test_traffic_scenario_through_the_real_miner(twin, tmp_path, capsys):
    out = tmp_path / "traffic.json"
    args = ["traffic", "--cascade", str(twin), "--rps", "8", "--duration-s", "1.5", "--rates", "0.3,1.0",
            "--burst-factor", "2", "--burst-s", "1.5", "--wallets", "2", "--json", str(out)]
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    assert list(report["runs"]) == ["fit", "escalation-30", "escalation-100", "burst"]
    assert report["miner_ready_s"] > 0 and any("MINER READY" in line for line in report["startup_log"])
    fields = {"requests", "rate_rps", "sent_rps", "latency_ms", "valid_answers", "late_answers", "miner_late",
              "engine_late_answers", "other_failures", "status_codes", "answers_by_status", "answers_from_prior",
              "answers_by_levels_run", "measured_escalation", "level_mean_ms", "batches", "axon_outcomes",
              "device_memory_peak_gb", "target_escalation", "planned_escalation"}
    for name, run in report["runs"].items():
        assert fields <= set(run), f"{name}: missing {fields - set(run)}"
        assert run["valid_answers"] == run["requests"] and run["late_answers"] == 0 and run["miner_late"] == 0
        assert run["answers_from_prior"] == 0 and run["other_failures"] == 0
        assert sum(run["answers_by_levels_run"].values()) == run["requests"]
        assert run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
        # what the miner escalated is what the fit planned (the same images, the same float32 CPU kernels)
        assert run["measured_escalation"] == pytest.approx(run["planned_escalation"])
    assert report["runs"]["fit"]["answers_by_levels_run"]["1"] == report["runs"]["fit"]["requests"]
    assert report["runs"]["escalation-100"]["answers_by_levels_run"]["3"] == 12
    assert set(report["runs"]["escalation-100"]["level_mean_ms"]) == {"1", "2", "3"}
    thirty = report["runs"]["escalation-30"]
    assert thirty["planned_escalation"] == pytest.approx(round(0.3 * 12) / 12)
    assert sum(thirty["escalated_sizes"].values()) == round(0.3 * 12)
    assert thirty["level1_exit_margin"] > 0 and not math.isnan(thirty["level1_calibration"]["temperature"])
    assert report["runs"]["burst"]["requests"] == 24 and report["runs"]["burst"]["rate_rps"] == 16
    assert "| escalation-100 | 1.00 / 1.00 / 1.00 | 12 at 8/s |" in capsys.readouterr().out


@pytest.mark.gpu
def test_builders_make_bf16_models_on_the_gpu_that_load_there(tmp_path):
    assert make_tiny_models.main(["--out", str(tmp_path), "--device", "cuda:0", "--production", "tiny"]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tiny-qwen3-vl" / "model.safetensors"), "pt") as weights:
        first = weights.get_tensor(next(iter(weights.keys())))
    assert str(first.dtype) == "torch.bfloat16"
    twin = ROOT / "config" / TWIN
    for config in load_cascade(twin).experts():
        config.model = str(tmp_path / Path(config.model).name)
        config.dtype = "bfloat16"
        expert = build_expert(config, "cuda:0")
        expert.load()
        assert all(0.0 <= p <= 1.0 for p in expert.predict_batch(mixed_images(3)))
        expert.close()
