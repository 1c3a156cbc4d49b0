"""The layout's contract: the runtime packages hold only what the miner runs, and imports run one way.

    neurons/, cascade/   the miner (runtime): never import a tool or the lab, not even lazily inside a function
    sn72_tools/          what an operator runs offline (eval, fit, train, promote, al, register, submit, query,
                         downloads): may import the runtime, never the lab
    sn72_lab/            benches, red team, soak, fuzz, demo, tiny test models: may import anything above

Checked twice: statically over every import statement in the source (lazy imports included), and at run time by
importing the miner, the engine and every expert backend and listing what was loaded.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ("neurons", "cascade")
FORBIDDEN = {"runtime": ("sn72_tools", "sn72_lab"), "sn72_tools": ("sn72_lab",)}
# Libraries only the offline tools use; the miner loading one is a sign of a tool on the request path.
OFFLINE_LIBRARIES = ("sklearn", "matplotlib", "datasets", "rich", "ruamel")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def _violations(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in _imported_modules(path):
                if module.split(".")[0] in forbidden:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_the_runtime_never_imports_a_tool_or_the_lab():
    assert _violations(RUNTIME, FORBIDDEN["runtime"]) == []


def test_the_tools_never_import_the_lab():
    assert _violations(("sn72_tools",), FORBIDDEN["sn72_tools"]) == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # The contract test itself can fail: a lazy import inside a function is caught.
    package = tmp_path / "cascade"
    package.mkdir()
    (package / "bad.py").write_text("def later():\n    from sn72_tools.evaluation import cli\n    return cli\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _violations(("cascade",), FORBIDDEN["runtime"]) == ["cascade/bad.py:2 imports sn72_tools.evaluation"]


@pytest.mark.parametrize("package", ["sn72_tools", "sn72_lab"])
def test_the_packages_outside_the_runtime_exist_and_hold_code(package):
    assert len(list((ROOT / package).rglob("*.py"))) > 5


@pytest.mark.slow
def test_the_miner_engine_and_every_expert_load_no_tool_at_run_time():
    code = (
        "import sys\n"
        "import neurons.miner, cascade.engine, cascade.consensus, cascade.preflight\n"
        "from cascade.experts import hf_classifier, zero_shot, detector, owlv2, vlm_remote, vlm_transformers\n"
        "from cascade.experts import worker_main\n"
        "from cascade.observers import active_learning\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN['runtime'] + OFFLINE_LIBRARIES!r})\n"
        "print(bad)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
