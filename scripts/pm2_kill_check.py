#!/usr/bin/env python
"""Kill the miner that pm2 runs every way a box can, and report whether pm2 brought it back and how fast.

    python scripts/pm2_kill_check.py --yes                  # the pm2 app sn72-miner on this box
    python scripts/pm2_kill_check.py --demo --pm2 PATH      # a throwaway offline miner under a private pm2

Ways, one after the other, each once the miner serves again: SIGKILL, SIGSEGV, SIGTERM and SIGINT (a drain,
then exit 0: restarted, as only `pm2 stop` stops the miner for good), SIGHUP before READY (while the models
load; after READY SIGHUP is a hot reload, not a kill), an OOM-like kill (SIGKILL to the process of the miner's
tree that the kernel's OOM killer would pick: the highest /proc/PID/oom_score), and last `pm2 stop` (stays
stopped), after which the miner is started again with `pm2 restart`. Each costs the miner a restart (model
load and warm-up): on a serving miner, run it at a quiet time. `--demo` builds a one-model CPU cascade, wallets
and an offline metagraph in a temporary folder and runs them through this project's pm2.config.js under a pm2
daemon of its own (PM2_HOME in that folder), so nothing of the box's own pm2 is touched.

Serving is read from /readyz on the miner's metrics port (taken from the config pm2 passes it, or
`--readyz URL`), else from the `MINER READY` line in pm2's log. Exit status: 0 when every way ended as
expected, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "MINER READY"  # neurons/miner.py READY_LINE (not imported: that would load the miner's modules)


@dataclass
class Way:
    name: str
    sig: signal.Signals | None  # None: `pm2 stop`
    before_ready: bool = False
    oom_like: bool = False
    expect_restart: bool = True


WAYS = [
    Way("SIGKILL", signal.SIGKILL),
    Way("SIGSEGV", signal.SIGSEGV),
    Way("SIGTERM", signal.SIGTERM),
    Way("SIGINT", signal.SIGINT),
    Way("SIGHUP before READY", signal.SIGHUP, before_ready=True),
    Way("OOM-like (SIGKILL, top oom_score)", signal.SIGKILL, oom_like=True),
    Way("pm2 stop", None, expect_restart=False),
]


class Pm2:
    def __init__(self, binary: str, app: str, env: dict[str, str]) -> None:
        self.binary, self.name, self.env = binary, app, env

    def run(self, *args: str) -> str:
        done = subprocess.run([self.binary, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"error: pm2 {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def app(self) -> dict[str, Any]:
        for proc in json.loads(self.run("jlist")):
            if proc["name"] == self.name:
                return {"pid": proc["pid"], **proc["pm2_env"]}
        raise SystemExit(f"error: pm2 has no app named {self.name} (pm2 ls)")


def readyz_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def readyz_url(app: dict[str, Any]) -> str | None:
    """/readyz of the miner pm2 runs, from the `--config` it passes (None: no metrics port there)."""
    args = app.get("args") or []
    if "--config" not in args:
        return None
    path = Path(args[args.index("--config") + 1])
    path = path if path.is_absolute() else Path(app.get("pm_cwd") or ROOT) / path
    try:
        metrics = (yaml.safe_load(path.read_text()) or {}).get("metrics") or {}
    except (OSError, yaml.YAMLError):
        return None
    host = str(metrics.get("host", "127.0.0.1"))
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{metrics['port']}/readyz" if metrics.get("port") else None


class Check:
    def __init__(self, pm2: Pm2, readyz: str | None, timeout_s: float) -> None:
        self.pm2, self.readyz, self.timeout_s = pm2, readyz, timeout_s
        self.log = Path(pm2.app()["pm_err_log_path"])

    def _log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def _ready_since(self, offset: int) -> bool:
        if self.readyz:
            return readyz_status(self.readyz) == 200
        with self.log.open("rb") as f:
            f.seek(offset)
            return any(line.startswith(READY_LINE.encode()) for line in f)

    def _backoff_s(self, offset: int) -> float | None:
        """The wait scripts/pm2_backoff.py announced in pm2's log since `offset` (None: none)."""
        with self.log.open("rb") as f:
            f.seek(offset)
            waits = re.findall(rb"pm2_backoff - .* starting again in ([0-9.]+) s", f.read())
        return float(waits[-1]) if waits else None

    def _wait(self, predicate: Callable[[], Any], timeout_s: float) -> Any:
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        return None

    def serving(self) -> int:
        """Wait until the miner serves; its pid."""
        app = self.pm2.app()
        if app["status"] != "online":
            print(f"  {self.pm2.name} is {app['status']}: pm2 restart", flush=True)
            self.pm2.run("restart", self.pm2.name)
        offset = 0  # the READY line of the current run may be anywhere in the log
        if not self._wait(lambda: self.pm2.app()["status"] == "online" and self._ready_since(offset), self.timeout_s):
            raise SystemExit(f"error: {self.pm2.name} does not serve within {self.timeout_s:.0f} s")
        return int(self.pm2.app()["pid"])

    def target(self, way: Way, pid: int) -> tuple[int, str]:
        if not way.oom_like:
            return pid, "miner"
        tree = [pid, *descendants(pid)]
        chosen = max(tree, key=oom_score)
        return chosen, "miner" if chosen == pid else f"child {chosen} of the miner"

    def one(self, way: Way) -> dict[str, Any]:
        pid = self.serving()
        restarts = self.pm2.app()["restart_time"]
        if way.before_ready:  # a fresh start, caught while it loads (its /healthz answers, /readyz does not yet)
            offset = self._log_size()
            self.pm2.run("restart", self.pm2.name)
            restarts = self.pm2.app()["restart_time"]

            def loading() -> int | None:
                app = self.pm2.app()
                new = app["pid"] not in (0, pid) and app["status"] == "online" and not self._ready_since(offset)
                return int(app["pid"]) if new and listening(int(app["pid"])) else None

            loading_pid = self._wait(loading, self.timeout_s)
            if loading_pid is None:
                return {"way": way.name, "outcome": "missed: it was ready before the signal could be sent"}
            pid = loading_pid
        offset = self._log_size()
        target, who = self.target(way, pid)
        start = time.monotonic()
        if way.sig is None:
            who = "pm2 stop (SIGINT)"
            self.pm2.run("stop", self.pm2.name)
        else:
            os.kill(target, way.sig)
        # A new process (pm2 restarts at once; the back-off runs inside it), then serving again.
        new_pid = self._wait(lambda: (a := self.pm2.app())["pid"] not in (0, pid) and a["status"] == "online"
                             and int(a["pid"]), 30 if way.expect_restart else 5)
        app = self.pm2.app()
        row: dict[str, Any] = {"way": way.name, "killed": who, "pm2_exit_code": app.get("exit_code"),
                               "pm2_status": app["status"], "restarts": app["restart_time"] - restarts}
        if new_pid is None:
            if who != "miner" and self.pm2.app()["pid"] == pid:
                row["outcome"] = "the miner kept running (it restarts its own worker)"
                row["ok"] = True
            else:
                row["outcome"] = "not restarted"
                row["ok"] = not way.expect_restart
            return row
        row["new_process_s"] = round(time.monotonic() - start, 1)
        if not self._wait(lambda: self._ready_since(offset), self.timeout_s):
            row.update(outcome="restarted, not serving again", ok=False)
            return row
        row.update(outcome="restarted, serving again", ready_again_s=round(time.monotonic() - start, 1),
                   backoff_s=self._backoff_s(offset), ok=way.expect_restart)
        return row


def descendants(pid: int) -> list[int]:
    out, parents = [], {pid}
    for _ in range(4):  # the miner's workers and their children, if any
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid in parents and int(entry.name) not in out:
                    found.append(int(entry.name))
        if not found:
            break
        out += found
        parents = set(found)
    return out


def oom_score(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/oom_score").read_text())
    except (OSError, ValueError):
        return -1


def listening(pid: int) -> bool:
    """The process is the miner itself past its imports (not pm2_backoff.py waiting): it holds a TCP listener."""
    try:
        sockets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    inodes = {s[8:-1] for s in sockets if s.startswith("socket:[")}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(row.split()[3] == "0A" and row.split()[9] in inodes for row in rows):  # 0A: LISTEN
            return True
    return False


def demo_setup(folder: Path, pm2_binary: str) -> tuple[Pm2, str]:
    """A one-model CPU cascade, wallets and an offline metagraph under `folder`, started by a private pm2."""
    os.environ.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")  # before transformers is imported
    from sn72_lab.offline import free_port, make_wallets
    from sn72_lab.tiny_models import build_tiny_vit

    wallets = make_wallets(folder)
    model = build_tiny_vit(folder / "models" / "tiny-vit")
    (folder / "cascade.yaml").write_text(yaml.safe_dump({"version": "kill-check", "prior": 0.5, "levels": [
        {"name": "fast", "exit_margin": 0.3, "experts": [
            {"name": "vit", "backend": "hf_classifier", "model": str(model), "device": "cpu", "max_batch": 8,
             "max_wait_ms": 2.0, "options": {"positive_labels": ["Roadwork"]}}]}]}))
    metrics_port = free_port()
    (folder / "miner.yaml").write_text(yaml.safe_dump({
        "wallet": {"name": wallets.miner.name, "hotkey": "default", "path": str(wallets.path)},
        "chain": {"offline": True, "metagraph_file": str(folder / "metagraph.json")},
        "axon": {"host": "127.0.0.1", "port": free_port(), "external_ip": "127.0.0.1"},
        "metrics": {"port": metrics_port}, "cascade_file": "cascade.yaml", "drain_timeout_s": 5.0,
    }))
    env = {**os.environ, "PM2_HOME": str(folder / "pm2"), "HOME": str(folder),
           "MINER_CONFIG": str(folder / "miner.yaml")}
    pm2 = Pm2(pm2_binary, "sn72-miner", env)
    pm2.run("start", str(ROOT / "pm2.config.js"))
    return pm2, f"http://127.0.0.1:{metrics_port}/readyz"


def table(rows: list[dict[str, Any]]) -> str:
    head = ["way", "killed", "pm2 recorded", "outcome", "new process", "back-off", "serving again", "as expected"]
    lines = [head]
    for r in rows:
        saw = f"exit {r['pm2_exit_code']}, then {r['pm2_status']}" if "pm2_status" in r else ""
        lines.append([r["way"], r.get("killed", ""), saw, r["outcome"],
                      f"{r['new_process_s']} s" if "new_process_s" in r else "-",
                      f"{r['backoff_s']} s" if r.get("backoff_s") is not None else "-",
                      f"{r['ready_again_s']} s" if "ready_again_s" in r else "-", "yes" if r.get("ok") else "NO"])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", default="sn72-miner", help="the pm2 app name")
    parser.add_argument("--pm2", default=shutil.which("pm2") or "pm2", help="the pm2 binary")
    parser.add_argument("--readyz", help="the miner's /readyz URL (default: from the config pm2 passes it)")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="longest wait for the miner to serve again")
    parser.add_argument("--only", action="append", help="run only the ways whose name starts with this (repeatable)")
    parser.add_argument("--demo", action="store_true", help="a throwaway offline miner under a private pm2 daemon")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--yes", action="store_true", help="kill the running miner (it restarts each time)")
    args = parser.parse_args(argv)
    if not args.demo and not args.yes:
        parser.error(f"this kills {args.app} several times (each a restart with model load): pass --yes, or --demo")
    ways = [w for w in WAYS if not args.only or any(w.name.startswith(o) for o in args.only)]
    folder = Path(tempfile.mkdtemp(prefix="pm2-kill-check-")) if args.demo else None
    readyz: str | None
    try:
        if folder is not None:
            pm2, readyz = demo_setup(folder, args.pm2)
        else:
            pm2 = Pm2(args.pm2, args.app, dict(os.environ))
            readyz = args.readyz or readyz_url(pm2.app())
        version = pm2.run("--version").strip().splitlines()[-1]
        print(f"pm2 {version}, app {pm2.name}, serving read from {readyz or 'the MINER READY line in its log'}")
        check = Check(pm2, readyz, args.timeout_s)
        rows = []
        for way in ways:
            print(f"- {way.name} ...", flush=True)
            rows.append(check.one(way))
            print(f"  {rows[-1]}", flush=True)
        if pm2.app()["status"] != "online":
            pm2.run("restart", pm2.name)  # leave it running
        print(table(rows))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return 0 if all(r.get("ok") for r in rows) else 1
    finally:
        if folder is not None:
            subprocess.run([args.pm2, "kill"], env={**os.environ, "PM2_HOME": str(folder / "pm2")},
                           capture_output=True, timeout=120)
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
