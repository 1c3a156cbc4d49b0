"""Every operator tool is an entry point that answers --help without side effects; no file edits sys.path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

# One interpreter imports every entry point and calls each with --help, capturing what it prints.
_PROBE = """
import contextlib, importlib, io, json, sys
results = {}
for name, target in json.loads(sys.argv[1]).items():
    module, function = target.split(":")
    out = io.StringIO()
    sys.argv = [name, "--help"]
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            getattr(importlib.import_module(module), function)()
        except SystemExit as exc:
            code = exc.code
    results[name] = [code, out.getvalue()]
print(json.dumps(results))
"""


@pytest.mark.slow
def test_every_tool_answers_help_and_leaves_nothing_behind(tmp_path):
    import json

    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(SCRIPTS)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert set(results) == set(SCRIPTS) and {"sn72-miner", "sn72-al", "sn72-bench", "sn72-gpu-bench",
                                             "sn72-download-models", "sn72-demo", "sn72-query"} <= set(results)
    for name, (code, text) in results.items():
        assert code in (0, None) and "usage:" in text, f"{name}: exit {code}\n{text}"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in (".bittensor", ".cache", ".config"))
    assert leftovers == [], f"--help left files behind: {leftovers}"


@pytest.mark.bench
def test_the_gpu_bench_wrapper_answers_help(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: sn72-gpu-bench" in done.stdout, done.stderr
    assert not (tmp_path / "bench-results").exists() and not (tmp_path / ".bench").exists()


def test_no_file_edits_sys_path():
    offenders = [str(path.relative_to(ROOT)) for folder in ("neurons", "cascade", "sn72_tools", "sn72_lab", "scripts")
                 for path in (ROOT / folder).rglob("*.py")
                 if re.search(r"sys\.path\.(insert|append)", path.read_text())]
    assert offenders == []


@pytest.mark.bench
@pytest.mark.slow
def test_a_bench_on_a_model_not_built_yet_is_one_line_and_exit_2(tmp_path):
    cascade = tmp_path / "cascade.yaml"
    cascade.write_text(
        "version: missing-model\nlevels:\n  - name: one\n    exit_margin: 0.0\n    experts:\n"
        "      - {name: vit, backend: hf_classifier, model: ./not-built/vit, device: cpu, warmup_batches: 0,\n"
        "         options: {positive_labels: [Roadwork]}}\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "sn72_lab.bench", "engine", "--cascade", str(cascade),
                           "--requests", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not-built/vit" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
