"""`sn72-miner reload --config M`: put a changed cascade or calibration in service in the running miner, and say
how it went (docs/reload.md).

1. Read the miner YAML, the cascade it names and its calibration, exactly as the miner would; the models must be
   present. A problem here is printed as at start-up and nothing is sent.
2. Find the miner running for that config (neurons/running.py: its metrics port's `/status`, and the pid it reports
   listening on the config's axon port). It must be READY (a SIGHUP before READY ends a miner) and serve the cascade
   file this config names.
3. Send SIGHUP to that pid, wait for the outcome of a reload that started after the signal, print it.

Exit codes (EXIT_CODES below, which `sn72-miner reload --help` prints): 0 serving the files' content, 1 the miner
stopped answering, 2 the files fail the check, 3 refused by the miner, 4 no ready miner for this config, 5 no
outcome in time, 75 draining to restart on the new cascade.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from cascade.config import EngineConfig
from cascade.served_version import served
from neurons.config import ConfigError, MinerConfig, load_config
from neurons.reload import RESTART_EXIT_CODE
from neurons.running import NotRunning, RunningMiner, find_running, read_status
from neurons.tool_config import CONFIG_ENV

EXIT_SERVING = 0
EXIT_GONE = 1
EXIT_CHECK = 2
EXIT_REFUSED = 3
EXIT_NOT_RUNNING = 4
EXIT_TIMEOUT = 5
EXIT_CODES = {
    EXIT_SERVING: "the miner serves the files' content (reloaded, or they were unchanged)",
    EXIT_GONE: "the miner stopped answering while it reloaded",
    EXIT_CHECK: "the files do not pass the check (nothing was sent)",
    EXIT_REFUSED: "the miner refused the reload and keeps serving what it served (the reason is printed)",
    EXIT_NOT_RUNNING: "no miner is running for this config, or it is not ready (nothing was sent)",
    EXIT_TIMEOUT: "no outcome within --timeout (the reload may still end: its log, or /status on the metrics port)",
    RESTART_EXIT_CODE: "the new cascade fits only without the serving one and reload.drain_restart is on: the miner "
                       "drains and exits 75, and pm2 starts it on the new cascade",
}
POLL_S = 0.1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sn72-miner reload", usage="sn72-miner reload [--config M] [--timeout S] [the miner's overrides]",
        description="Check the cascade and calibration files the miner config names, have the miner running for "
        "that config reload them (SIGHUP to its pid), wait for the outcome and print it. The miner's own options "
        f"(--config, default ${CONFIG_ENV} as for the other tools; --set KEY=VALUE; flags) are read as the miner "
        "reads them.",
        epilog="Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()) + ".")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="longest wait for the outcome in seconds (a models reload loads and warms the new "
                             "models first; default 600)")
    return parser


def say_error(text: str) -> None:
    for line in text.splitlines():
        print(f"error: {line}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """`sn72-miner reload ARGV`: the exit code."""
    args, rest = build_parser().parse_known_args(argv)
    if os.environ.get(CONFIG_ENV) and not any(arg.split("=", 1)[0] == "--config" for arg in rest):
        rest = ["--config", os.environ[CONFIG_ENV], *rest]  # as sn72-al and the other tools (neurons/tool_config.py)
    try:
        config, engine_config, _ = load_config(rest)
    except ConfigError as exc:
        say_error(f"{exc}\nnothing was sent to the miner: fix the file, then run this again")
        return EXIT_CHECK
    try:
        miner = find_running(config)
    except NotRunning as exc:
        say_error(str(exc))
        return EXIT_NOT_RUNNING
    refusal = not_for_this_config(miner, config)
    if refusal:
        say_error(refusal)
        return EXIT_NOT_RUNNING
    problems = missing_models(config, engine_config)
    if problems:
        say_error("\n".join(problems) + "\nnothing was sent: the miner keeps serving " + miner.serving)
        return EXIT_CHECK
    try:
        version = served(engine_config.cascade).version  # reads every model file (cached by the miner, not here)
    except OSError as exc:
        say_error(f"models: cannot read {exc.filename}: {exc.strerror}\nnothing was sent: the miner keeps serving "
                  f"{miner.serving}")
        return EXIT_CHECK
    print(f"checked: {config.cascade_file} -> version {version}; the miner (pid {miner.pid}) serves {miner.serving}",
          flush=True)
    return signal_and_wait(config, miner, args.timeout)


def not_for_this_config(miner: RunningMiner, config: MinerConfig) -> str:
    """Why the running miner cannot be reloaded with this config's files ('' when it can)."""
    if miner.phase != "ready":
        return (f"the miner (pid {miner.pid}) is {miner.phase}, not ready: nothing was sent (a SIGHUP before it "
                f"serves would end it); wait for /readyz, then run this again")
    serving_file = miner.status.get("cascade_file")
    if serving_file != str(config.cascade_file):
        return (f"the miner (pid {miner.pid}) reads its cascade from {serving_file}, not {config.cascade_file}: a "
                f"reload re-reads the miner's own file; edit that one, or restart the miner with this config")
    return ""


def missing_models(config: MinerConfig, engine_config: EngineConfig) -> list[str]:
    """The start-up check of the models (present, where the loader looks): one line per problem."""
    from cascade.preflight import model_findings

    return [f"{f.step}: {f.text}" for f in model_findings(engine_config.cascade, config.cascade_file) if not f.ok]


def signal_and_wait(config: MinerConfig, miner: RunningMiner, timeout_s: float) -> int:
    asked = int(miner.status.get("asked", 0))
    try:
        os.kill(miner.pid, signal.SIGHUP)
    except OSError as exc:  # gone since, or another user's
        say_error(f"cannot signal the miner (pid {miner.pid}): {exc.strerror}")
        return EXIT_NOT_RUNNING
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        try:
            status = read_status(config)
        except NotRunning:
            status = None
        if status is None or status.get("pid") != miner.pid:
            say_error(f"the miner (pid {miner.pid}) stopped answering on its metrics port while it reloaded; "
                      f"see its log")
            return EXIT_GONE
        last = status.get("last_reload")
        if last is not None and int(last.get("covers", 0)) > asked:  # a reload that read the files after the signal
            return report(status, last, miner.serving)
        time.sleep(POLL_S)
    say_error(f"no outcome within {timeout_s:g}s: the reload may still end; see the miner's log or its /status")
    return EXIT_TIMEOUT


def report(status: dict[str, Any], last: dict[str, Any], was: str) -> int:
    """Print the outcome of the reload; its exit code."""
    outcome, message, serving = last["outcome"], last["message"], status.get("serving")
    if status.get("restart_requested"):
        print(f"restarting ({outcome}): {message}", flush=True)
        return RESTART_EXIT_CODE
    if outcome.startswith(("refused", "failed")):
        say_error(f"reload {outcome} after {last['seconds']:.2f}s: {message}")
        return EXIT_REFUSED
    if outcome == "unchanged":
        print(f"unchanged: still serving {serving}", flush=True)
        return EXIT_SERVING
    print(f"reloaded ({outcome}) in {last['seconds']:.2f}s: serving {serving} (was {was})", flush=True)
    print(f"  {message}", flush=True)
    return EXIT_SERVING
