"""The engine logs, once per expert, the resize mode it serves and where the mode came from.

Real engine, real tiny models saved to folders and loaded the way a hub id is; the log read through a loguru sink.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from loguru import logger

from cascade.config import EngineConfig
from cascade.engine import Engine
from cascade.experts.preprocess import write_preprocess_record
from cascade.experts.zero_shot import ZeroShotExpert
from sn72_lab.tiny_models import build_tiny_clip, build_tiny_owlv2, build_tiny_siglip2, build_tiny_vit
from tests.factories.engine import cascade_config, expert_config
from tests.factories.experts import load_expert


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resize-log")
    plain = build_tiny_vit(root / "vit")
    recorded = root / "vit-letterbox"
    shutil.copytree(plain, recorded)
    write_preprocess_record(recorded, "letterbox")
    return {"vit": plain, "vit-letterbox": recorded, "clip": build_tiny_clip(root / "clip"),
            "owlv2": build_tiny_owlv2(root / "owlv2")}


def start_and_log(config: EngineConfig) -> list[str]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    engine = Engine(config)
    try:
        engine.start()
    finally:
        logger.remove(sink)
        engine.close()
    return [line for line in lines if re.match(r"expert \S+: backend ", line)]


def test_each_expert_logs_its_resize_mode_and_its_source_once(models: dict[str, Path]) -> None:
    positive = {"positive_labels": ["Roadwork"]}
    experts = [
        # two replicas (on the CPU, or on two GPUs): one line
        expert_config("plain", model=str(models["vit"]), options=positive, replicas=2, device="auto"),
        expert_config("recorded", model=str(models["vit-letterbox"]), options=positive),
        expert_config("yaml", model=str(models["vit-letterbox"]), options=positive, resize="center_crop",
                      input_size=48),
        expert_config("clip", backend="zero_shot", model=str(models["clip"])),
        expert_config("owl", backend="owlv2", model=str(models["owlv2"])),
    ]
    lines = start_and_log(EngineConfig(cascade=cascade_config([experts[:3], experts[3:]])))
    by_name = {line.split(":")[0].removeprefix("expert "): line for line in lines}
    assert len(lines) == len(by_name) == 5, lines
    assert by_name["plain"].startswith(f"expert plain: backend hf_classifier, model {models['vit']}, on ")
    assert re.search(r", on (\S+ x2|cuda:\d, cuda:\d), input 32x32, resize squash \(from the backend's default\)$",
                     by_name["plain"]), by_name["plain"]  # placed on the CPU here, on two GPUs where there are
    assert by_name["recorded"].endswith(
        "on cpu, input 32x32, resize letterbox (from the model folder's sn72_preprocess.json)")
    assert by_name["yaml"].endswith("on cpu, input 48x48, resize center_crop (from the cascade YAML)")
    assert "backend zero_shot" in by_name["clip"] and "resize squash (from the backend's default)" in by_name["clip"]
    assert re.search(r"backend owlv2, .* input \d+x\d+, resize letterbox \(from the backend's default\)",
                     by_name["owl"])


def test_a_naflex_model_says_it_keeps_each_image_aspect(tmp_path: Path) -> None:
    expert = load_expert(ZeroShotExpert, "zero_shot", build_tiny_siglip2(tmp_path / "siglip2"))
    assert expert.naflex
    assert re.fullmatch(r"input <= \d+ patches of \d+, resize none: each image keeps its aspect \(NaFlex\) "
                        r"\(from the backend's default\)", expert.preprocessing.describe())
