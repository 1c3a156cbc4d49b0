"""The request path (neurons/miner.py -> cascade/engine.py -> experts) never imports the offline tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = ("cascade.evaluation", "cascade.eval", "cascade.training", "cascade.train", "cascade.tools", "sklearn",
           "matplotlib", "datasets")


def test_the_miner_engine_and_experts_import_no_offline_tool():
    code = (
        "import sys\n"
        "import neurons.miner, cascade.engine, cascade.consensus\n"
        "from cascade.experts import hf_classifier, zero_shot, detector\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({OFFLINE!r}))\n"
        "print(bad)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
