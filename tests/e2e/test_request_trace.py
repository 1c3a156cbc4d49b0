"""scripts/request_trace: one request traced through this checkout's miner (the figures of the layout change's
request-path table, docs/bench/cpu/2026-12-05/request-path-trace/), run as its docstring says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "request_trace" / "trace_one_request.py"

pytestmark = [pytest.mark.slow, pytest.mark.bench]


def test_one_request_enters_the_runtime_files_and_changes_threads_as_the_table_says(tmp_path):
    env = {**os.environ, "SN72_TRACE_ROOT": str(ROOT), "SN72_TRACE_OUT": str(tmp_path / "ev"),
           "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent), str(ROOT)])}
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], env=env, check=True, timeout=240,
                   capture_output=True)
    done = subprocess.run([sys.executable, str(SCRIPT), "--analyse", str(tmp_path)], check=True, timeout=60,
                          capture_output=True, text=True, env={**os.environ, "SN72_TRACE_OUT": str(tmp_path / "ev")})
    report = json.loads((tmp_path / "trace.json").read_text())
    assert json.loads(done.stdout)["thread_hand_offs"] == 6, report["thread_hand_offs"]
    assert report["thread_hand_offs"] == ["axon-http -> engine-loop", "engine-loop -> decode_0",
                                          "decode_0 -> engine-loop", "engine-loop -> expert-vit-cpu_0",
                                          "expert-vit-cpu_0 -> engine-loop", "engine-loop -> axon-http"]
    # the image's state is one object's; the request's lifetime file no longer decides it
    assert report["files"]["cascade/request_image.py"] > 0 and "cascade/decode.py" in report["files"]
