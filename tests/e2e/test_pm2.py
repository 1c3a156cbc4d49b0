"""The miner under a real pm2, started through the project's pm2.config.js.

pm2 7 reports a death by a signal as exit code 0 (lib/God.js: `handleExit(clu, code || 0, signal)`): with
0 in `stop_exit_codes`, a miner killed by SIGKILL (the OOM killer) or SIGSEGV stayed down for good. And with
a restart delay configured, pm2 7 shows an exit it will not restart (2, a configuration to fix) as
"waiting restart". pm2 comes from npm (pm2@7) into a temporary folder and runs with its own PM2_HOME; the
module is skipped, with the reason, where node or npm are absent or npm cannot install it.

SN72_PM2_CONFIG points the module at another copy of the config; keep the copy at the repository root (it
runs the project's interpreter from beside itself), e.g. `git show HEAD~1:pm2.config.js > pm2.old.config.js`.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sn72_lab.offline import ROOT, make_wallets
from sn72_lab.tiny_models import build_tiny_vit
from tests.factories.pm2 import Pm2, install_pm2, offline_miner_config, readyz, wait_until

pytestmark = pytest.mark.slow

CONFIG = Path(os.environ.get("SN72_PM2_CONFIG") or ROOT / "pm2.config.js").resolve()
APP = "sn72-miner"
STAMPED_ERROR = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| ERROR +\| error: ")
# A stand-in for the miner: exits with CODE on its first start, then stays up (pm2 passes restart_time).
STAND_IN = "import os, sys, time; sys.exit(CODE) if os.environ.get('restart_time', '0') == '0' else time.sleep(300)"
EXIT_CODES = {1: "a crash", 70: "device context lost", 75: "drain-restart", 2: "configuration error"}


@pytest.fixture(scope="module")
def pm2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pm2")
    manager = Pm2(install_pm2(folder / "npm"), folder / "home")
    try:
        yield manager
    finally:
        manager.kill()


def log_tail(pm2: Pm2, name: str = APP, lines: int = 15) -> str:
    app = pm2.app(name)
    if app is None or not app["log"] or not Path(app["log"]).exists():
        return "(no log)"
    return "\n".join(Path(app["log"]).read_text().splitlines()[-lines:])


@pytest.fixture(scope="module")
def stand_ins(pm2):
    """One app per exit code, with the project's settings (restart policy, stop codes) and a stand-in script."""
    apps = pm2.home.parent / "stand-ins.config.js"
    apps.write_text(f"""
const path = require("path");
const base = require({str(CONFIG)!r}).apps[0];
module.exports = {{apps: {list(EXIT_CODES)!r}.map((code) => ({{
  ...base, name: `exit-${{code}}`, args: ["-c", {STAND_IN!r}.replace("CODE", code)],
  out_file: path.join({str(pm2.home)!r}, "logs", `exit-${{code}}.log`),
  error_file: path.join({str(pm2.home)!r}, "logs", `exit-${{code}}.log`),
}}))}};
""")
    pm2("start", str(apps))
    return pm2


@pytest.fixture(scope="module")
def miner(pm2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("miner")
    config, metrics_port = offline_miner_config(folder, make_wallets(folder), build_tiny_vit(folder / "tiny-vit"))
    pm2("start", str(CONFIG), MINER_CONFIG=str(config))
    try:
        wait_until(lambda: readyz(metrics_port) == 200, 150, "the miner started by pm2 answers /readyz 200")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log_tail(pm2)}") from None
    return SimpleNamespace(config=config, metrics_port=metrics_port)


@pytest.mark.parametrize("code", list(EXIT_CODES), ids=list(EXIT_CODES.values()))
def test_every_exit_but_a_configuration_error_is_restarted(stand_ins, code):
    name = f"exit-{code}"
    app = wait_until(lambda: (a := stand_ins.app(name)) and a["exit_code"] is not None and a, 30,
                     f"{name} has exited once")
    assert app["exit_code"] == code
    if code == 2:
        time.sleep(2)  # a restart would have begun at once: pm2.config.js sets no restart delay
        app = stand_ins.app(name)
        assert (app["status"], app["restarts"], app["pid"]) == ("stopped", 0, 0), app
    else:
        wait_until(lambda: (a := stand_ins.app(name))["restarts"] == 1 and a["status"] == "online", 20,
                   f"pm2 restarts {name}: {stand_ins.app(name)}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_a_miner_killed_by_a_signal_is_restarted_and_serves_again(pm2, miner, sig):
    wait_until(lambda: readyz(miner.metrics_port) == 200, 90, "serving before the kill")
    before = pm2.app(APP)
    assert before is not None and before["status"] == "online" and before["pid"]
    os.kill(before["pid"], sig)
    # pm2 restarts at once (the back-off, at most 15 s, runs inside the new process): a new pid, online.
    try:
        wait_until(lambda: (a := pm2.app(APP))["pid"] not in (0, before["pid"]) and a["status"] == "online", 25,
                   "pm2 starts a new process")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; pm2 has {pm2.app(APP)} after {sig.name}") from None
    wait_until(lambda: readyz(miner.metrics_port) == 200, 90, f"the restarted miner serves again after {sig.name}")
    after = pm2.app(APP)
    assert after["restarts"] == before["restarts"] + 1 and after["exit_code"] == 0  # pm2's code for a signal


def test_pm2_stop_drains_and_the_miner_stays_stopped(pm2, miner):
    wait_until(lambda: readyz(miner.metrics_port) == 200, 90, "serving before the stop")
    restarts = pm2.app(APP)["restarts"]
    pm2("stop", APP)
    time.sleep(2)  # a restart would have begun at once
    app = pm2.app(APP)
    assert (app["status"], app["pid"], app["restarts"]) == ("stopped", 0, restarts), app
    assert readyz(miner.metrics_port) is None
    assert "drained: " in log_tail(pm2, lines=8)


def test_a_configuration_error_is_not_restarted_shows_stopped_and_says_why_with_a_time(pm2, miner):
    bad = miner.config.with_name("bad.yaml")
    bad.write_text(yaml.safe_dump({**yaml.safe_load(miner.config.read_text()), "drain_timeout_s": "soon"}))
    pm2("delete", APP)
    pm2("start", str(CONFIG), MINER_CONFIG=str(bad))
    app = wait_until(lambda: (a := pm2.app(APP)) and a["exit_code"] is not None and a, 60, "the miner has exited")
    time.sleep(2)  # a restart would have begun at once
    app = pm2.app(APP)
    assert (app["exit_code"], app["status"], app["restarts"], app["pid"]) == (2, "stopped", 0, 0), app
    last = log_tail(pm2, lines=1)
    assert STAMPED_ERROR.match(last) and "drain_timeout_s" in last, last
