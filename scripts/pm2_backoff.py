#!/usr/bin/env python
"""pm2's entry for the miner: wait out a back-off after a quick failure, then become the miner (same pid).

    python scripts/pm2_backoff.py -m neurons.miner --config M      (what pm2.config.js runs)

Why the back-off lives here and not in pm2 (`exp_backoff_restart_delay`, `restart_delay`): pm2 7's
`God.handleExit` sets the status to "waiting restart" whenever a restart delay is configured, before it
checks `stop_exit_codes`; a miner that exited 2 (a configuration to fix) is then never restarted but
shown as "waiting restart" for good. With no delay configured pm2 shows it as "stopped", and restarts
every other exit at once, into this script, which waits with pm2's own numbers: 1 s, then 1.5 times
longer after each run shorter than 30 s, at most 15 s; a run of 30 s or more starts over at 1 s. No
wait on pm2's first start, nor outside pm2.

The wait is stamped on stderr (pm2's log) in the miner's line format. Standard library only: it runs
before anything heavy is imported, then `os.execv` replaces it with the miner, so pm2's signals
(`pm2 stop`, `pm2 sendSignal SIGHUP`) and the OOM killer reach the miner itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

FIRST_DELAY_S = 1.0
FACTOR = 1.5
MAX_DELAY_S = 15.0
STABLE_AFTER_S = 30.0  # pm2's EXP_BACKOFF_RESET_TIMER


def next_delay_s(previous_delay_s: float, previous_run_s: float | None) -> float:
    """Seconds to wait before this start, from the previous run's length and wait (None: no previous run)."""
    if previous_run_s is None:
        return 0.0
    if previous_run_s >= STABLE_AFTER_S or previous_delay_s <= 0:
        return FIRST_DELAY_S
    return min(MAX_DELAY_S, previous_delay_s * FACTOR)


def _say(message: str) -> None:
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    print(f"{stamp} | WARNING  | pm2_backoff - {message}", file=sys.stderr, flush=True)


def _pm2(field: str, default: str = "") -> str:
    """One of the fields pm2 hands its app as lower-case environment variables (pm_id, restart_time, exit_code)."""
    return os.environ.get(field, default)


def _state_file() -> Path:
    home = Path(os.environ.get("PM2_HOME") or Path.home() / ".pm2")
    return home / f"{_pm2('name', 'app')}-{_pm2('pm_id')}.backoff.json"


def wait_for_turn() -> None:
    """Under pm2 (it sets `pm_id`), sleep the back-off and record this start; outside pm2, nothing."""
    if "pm_id" not in os.environ:
        return
    state = _state_file()
    now = time.time()
    restarted = _pm2("restart_time", "0") not in ("", "0")
    previous_run_s, previous_delay_s = None, 0.0
    try:
        if restarted:
            record = json.loads(state.read_text())
            previous_run_s, previous_delay_s = max(0.0, now - float(record["started"])), float(record["delay_s"])
    except (OSError, ValueError, KeyError, TypeError):
        previous_run_s = STABLE_AFTER_S if restarted else None  # no record: a plain 1 s
    delay_s = next_delay_s(previous_delay_s, previous_run_s)
    if delay_s > 0:
        # pm2 reports a death by a signal as exit code 0 (God.js: `code || 0`), and a drain after SIGTERM exits 0 too.
        _say(f"pm2 restart {_pm2('restart_time')}: the last run lasted {previous_run_s:.1f} s (exit code "
             f"{_pm2('exit_code')} as pm2 reports it; 0: a signal or a drain); starting again in {delay_s:.2f} s")
        signal.signal(signal.SIGINT, lambda *_: sys.exit(0))  # `pm2 stop` during the wait: no traceback
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        time.sleep(delay_s)
    try:
        state.write_text(json.dumps({"started": time.time(), "delay_s": delay_s}))
    except OSError as exc:
        _say(f"cannot record the start in {state}: {exc} (the next restart waits 1 s)")


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: pm2_backoff.py PYTHON_ARGS... (e.g. -m neurons.miner --config M)")
    wait_for_turn()
    os.execv(sys.executable, [sys.executable, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
