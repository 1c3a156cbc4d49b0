"""`sn72-bench stages` on the CPU: the classifier's call timed whole and stage by stage, through the miner's loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sn72_lab import bench, make_tiny_models
from sn72_lab.bench_stages import STAGES

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.bench]


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """A folder laid out as the repository: config/ beside .bench/models/ (the cascade's model path is relative)."""
    root = tmp_path_factory.mktemp("stages")
    (root / "config").mkdir()
    shutil.copy(ROOT / "config" / "cascade.bench-cpu.yaml", root / "config")
    assert make_tiny_models.main(["--out", str(root / ".bench" / "models"), "tiny-vit"]) == 0
    return root


def test_every_stage_of_a_batch_1_call_is_timed_and_together_they_make_the_call(layout):
    import torch

    out = layout / "stages.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as bench_stages advises on a busy box: an oversubscribed pool stalls for 10s of ms
    try:
        assert bench.main(["stages", "--cascade", str(layout / "config" / "cascade.bench-cpu.yaml"), "--reps", "20",
                           "--warmup", "3", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert (report["expert"], report["device"], report["reps"], report["image_size"]) == ("tiny-vit", "cpu", 20,
                                                                                           [640, 480])
    assert list(report["stages"]) == list(STAGES)
    assert report["stages"]["forward"]["p50"] > 0 and report["stages"]["preprocess"]["p50"] > 0
    # nothing is synchronised on the CPU, so the stages add up to about the whole call (loosely: a loaded 2-core box)
    assert 0.25 < report["stages_sum_p50"] / report["predict_batch"]["p50"] < 4.0, report
    # device-only figures and the compile A/B are for CUDA
    assert "forward_device" not in report and "compile_ab" not in report and "decode_alternatives" not in report


def test_a_cascade_whose_first_expert_is_not_a_classifier_is_refused_with_the_reason(layout):
    cascade = {"version": "x", "levels": [{"name": "l", "experts": [
        {"name": "clip", "backend": "zero_shot", "model": "some/model", "device": "cpu"}]}]}
    path = layout / "config" / "zero-shot.yaml"
    path.write_text(yaml.safe_dump(cascade))
    with pytest.raises(SystemExit, match=r"stages times an hf_classifier expert.*'zero_shot'"):
        bench.main(["stages", "--cascade", str(path)])
