"""Reloading the real miner as an operator does, against one miner process on loopback.

`sn72-miner reload --config M` checks the files, signals the miner running for M, waits for the outcome and exits
with a code that says it; `--check` is no longer failed by the running miner's own ports; and the served version
changes with the models' content, in the log, the metrics and the active-learning records.

The tests share the miner and run in file order; each leaves the cascade file as it found it.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sn72_lab.loadtest import scrape
from sn72_lab.offline import ROOT, MinerProcess, Wallets, free_port, make_wallets, run_miner
from sn72_lab.tiny_models import build_tiny_vit
from sn72_tools.client import encode_jpeg, synthetic_image
from tests.factories.cascades import cascade_of, level, vit_expert
from tests.factories.dendrites import ask
from tests.factories.metrics import miner_status

pytestmark = pytest.mark.slow


class Served:
    """The shared miner, its folder and the good cascade it was started on."""

    def __init__(self, folder: Path, wallets: Wallets, process: MinerProcess, cascade: dict[str, Any]) -> None:
        self.folder, self.wallets, self.process, self.cascade = folder, wallets, process, cascade
        self.config = folder / "miner.yaml"
        self.cascade_file = folder / "cascade.yaml"

    def status(self) -> dict[str, Any]:
        return miner_status(self.process.metrics_port)

    def write(self, cascade: dict[str, Any] | str) -> None:
        self.cascade_file.write_text(cascade if isinstance(cascade, str) else yaml.safe_dump(cascade))

    def answer(self, first_image: int, count: int = 3) -> None:
        images = [encode_jpeg(synthetic_image(first_image + i, (320, 240))) for i in range(count)]
        assert all(o.status_code == 200 for o in ask(self.process, self.wallets.validator, images))


def expert(name: str, model: Path, **fields: Any) -> dict[str, Any]:
    return vit_expert(model, name, warmup_batches=1, **fields)


def cascade(*experts: dict[str, Any]) -> dict[str, Any]:
    return cascade_of(level(*experts, name="only"), version="ops")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("reload-command")
    wallets = make_wallets(folder)
    good = cascade(expert("vit", build_tiny_vit(folder / "models" / "vit-a", seed=0)))
    # every answer kept (the tiny model answers near 0.5): the store shows which version answered each image
    learning = {"enabled": True, "directory": str(folder / "al"), "uncertain_band": 0.5, "sample_rate": 1.0}
    with run_miner(folder, wallets.path, wallets.miner, good, extra={"active_learning": learning}) as process:
        yield Served(folder, wallets, process, good)


def reload_command(served: Served, *args: str, config: Path | None = None,
                   from_environment: bool = False) -> subprocess.CompletedProcess[str]:
    """`sn72-miner reload --config M` as an operator types it (`python -m neurons.miner` is the same entry point);
    `from_environment`: the config from $MINER_CONFIG instead, as the README's learning loop exports it."""
    config = config or served.config
    return subprocess.run([sys.executable, "-m", "neurons.miner", "reload",
                           *([] if from_environment else ["--config", str(config)]), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(served.folder),
                               **({"MINER_CONFIG": str(config)} if from_environment else {})})


def until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline_s, f"not seen in {timeout_s}s: {what}"
        time.sleep(0.05)


def versions_in_store(served: Served) -> dict[str, int]:
    with sqlite3.connect(f"file:{served.folder / 'al' / 'index.sqlite'}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT cascade_version, COUNT(*) FROM samples GROUP BY cascade_version").fetchall())


def series(metrics: dict[str, float], name: str) -> list[str]:
    return [key for key in metrics if key.startswith(name + "{")]


# -- item 2: --check and the running miner ---------------------------------------------------------

def test_check_passes_on_the_ports_of_the_miner_running_for_the_config(served):
    done = subprocess.run([sys.executable, "-m", "neurons.miner", "--config", str(served.config), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={"HOME": str(served.folder)})
    assert done.returncode == 0, done.stdout + done.stderr
    [listeners] = [line for line in done.stdout.splitlines() if line.startswith(("ok   listeners", "FAIL listeners"))]
    assert listeners.startswith("ok   listeners:"), listeners
    assert f"held by the miner running for them (pid {served.process.process.pid}, ready, serving ops+id." in listeners


# -- item 3: the served version follows the models' content ---------------------------------------

def test_a_model_retrained_in_place_is_served_under_a_new_version_in_log_metrics_and_records(served):
    # read from the metrics and the log, as an operator (and the code before /status) could
    [info] = series(scrape(served.process.metrics_port), "sn72_miner_cascade_info")
    before = info.split("version=")[1].rstrip("}")
    served.answer(100)
    until(lambda: versions_in_store(served).get(before, 0) >= 3, "three records of the first version")
    build_tiny_vit(served.folder / "models" / "vit-a", seed=1)  # new weights, same folder: the YAML is unchanged
    served.process.process.send_signal(signal.SIGHUP)
    until(lambda: any("reload (SIGHUP) done" in line for line in list(served.process.lines)), "the reload's line")
    line = next(line for line in served.process.lines if "reload (SIGHUP) done" in line)
    after = line.split("models -> serving ")[1].split(" ")[0]
    assert f"models -> serving {after} (was {before})" in line
    assert after != before and after.startswith("ops+id."), line
    served.answer(200)
    until(lambda: versions_in_store(served).get(after, 0) >= 3, "three records of the new version")
    assert versions_in_store(served)[before] == 3  # the records of the old weights keep their version
    metrics = scrape(served.process.metrics_port)
    [build] = series(metrics, "sn72_miner_build_info")  # one label set: the start-up one is gone
    assert f"cascade_version={after}," in build, build
    [info] = series(metrics, "sn72_miner_cascade_info")
    assert info.endswith(f"version={after}}}"), info


# -- item 2: sn72-miner reload -----------------------------------------------------------------------

def test_reload_checks_signals_waits_and_prints_the_new_version(served):
    was = served.status()["serving"]
    new_model = build_tiny_vit(served.folder / "models" / "vit-b", seed=2)
    served.write(cascade(expert("vit-b", new_model)))
    try:
        done = reload_command(served)
        now = served.status()["serving"]
        assert done.returncode == 0, done.stdout + done.stderr
        assert now != was and "reloaded (models) in " in done.stdout
        assert f"serving {now} (was {was})" in done.stdout and f"-> version {now};" in done.stdout
        assert "loaded vit-b@cpu" in done.stdout  # the miner's own line
        again = reload_command(served, from_environment=True)
        assert again.returncode == 0 and again.stdout.strip().endswith(f"unchanged: still serving {now}")
    finally:
        served.write(served.cascade)
        assert reload_command(served).returncode == 0


def test_a_reload_the_miner_refuses_exits_3_with_its_reason_and_the_old_cascade_serves(served):
    was = served.status()["serving"]
    served.write(cascade(expert("vit", served.folder / "models" / "vit-a", input_size=64)))  # fails its warm-up
    try:
        done = reload_command(served)
    finally:
        served.write(served.cascade)
    assert done.returncode == 3, done.stdout + done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "reload refused_warmup" in error and "doesn't match model" in error and f"still serving {was}" in error
    assert served.status()["serving"] == was
    served.answer(300)


@pytest.mark.parametrize(("content", "says"), [
    ("levels: [unclosed", "cannot read config"),
    (None, "models: vit (hf_classifier)"),
])
def test_files_that_fail_the_check_are_refused_before_any_signal(served, content, says):
    asked = served.status()["asked"]
    served.write(content or cascade(expert("vit", served.folder / "models" / "missing")))
    try:
        done = reload_command(served)
    finally:
        served.write(served.cascade)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert served.status()["asked"] == asked  # nothing was sent


def test_no_outcome_within_the_timeout_exits_5(served):
    completed = served.status()["last_reload"]["covers"]
    done = reload_command(served, "--timeout", "0")  # sends, then has no time to wait at all
    assert done.returncode == 5, done.stdout + done.stderr
    assert "no outcome within 0s" in done.stderr
    until(lambda: served.status()["last_reload"]["covers"] > completed, "the reload the signal asked for")


def test_a_config_whose_miner_is_not_running_is_refused_with_exit_4(served):
    config = yaml.safe_load(served.config.read_text())
    elsewhere = served.folder / "elsewhere.yaml"
    elsewhere.write_text(yaml.safe_dump({**config, "axon": {**config["axon"], "port": free_port()},
                                         "metrics": {"port": free_port()}}))
    done = reload_command(served, config=elsewhere)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "no miner is running for this config: nothing answers on its metrics port" in done.stderr
    # the running miner's metrics port, another axon port: that miner is not this config's
    other_axon = served.folder / "other-axon.yaml"
    other_axon.write_text(yaml.safe_dump({**config, "axon": {**config["axon"], "port": free_port()}}))
    done = reload_command(served, config=other_axon)
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"reports pid {served.process.process.pid}, which is no process of this machine listening" in done.stderr
