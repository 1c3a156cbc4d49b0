"""`sn72-redteam --out DIR` without `--miner`: the red team sets up an offline miner, starts it, attacks it, stops it.

The miner is started as an operator starts it (`python -m neurons.miner --config miner.yaml`), from `source` (the
repository whose code is attacked: another checkout gives a before/after comparison with the same attacks), with a
soft limit of 1024 open files (it must raise its own) and without the offline switches in its environment (it must
set its own). Its output goes to DIR/target/miner.log.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from sn72_lab.hostile.setup import write_target
from sn72_lab.hostile.target import Cast
from sn72_lab.offline import stop_process

READY_LINE = "MINER READY"  # neurons.miner.READY_LINE, not imported: the attacked code may be another checkout's
OFFLINE_SWITCHES = ("YOLO_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Registered validator keys besides the attacker wallet; they take turns signing attacks, so each attack's signer
# has had 8 attacks' time (over 24 s) to refill its rate bucket (burst 20 at 2/s: 10 s).
SIGNERS = 8


@dataclass
class OwnMiner:
    pid: int
    port: int
    metrics_port: int
    cast: Cast
    folder: Path
    log: Path


def _operator_limits() -> None:  # runs in the child before exec
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


@contextmanager
def own_miner(folder: Path, source: Path, ready_timeout_s: float = 300.0,
              processes: int | None = None) -> Iterator[OwnMiner]:
    cast, port, metrics_port = write_target(folder, probers=SIGNERS)
    if processes is not None:  # front processes (neurons/fronts.py)
        config = yaml.safe_load((folder / "miner.yaml").read_text())
        config.setdefault("axon", {})["processes"] = processes
        (folder / "miner.yaml").write_text(yaml.safe_dump(config))
    log = folder / "miner.log"
    env = {name: value for name, value in os.environ.items() if name not in OFFLINE_SWITCHES}
    env.update({"PYTHONUNBUFFERED": "1", "HOME": str(folder), "PYTHONPATH": str(source)})
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "neurons.miner", "--config", str(folder / "miner.yaml")],
                                   cwd=source, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=_operator_limits)
    try:
        until_s = time.monotonic() + ready_timeout_s
        while READY_LINE not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > until_s:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"the miner did not start (see {log}):\n{tail}")
            time.sleep(0.5)
        yield OwnMiner(process.pid, port, metrics_port, cast, folder, log)
    finally:
        stop_process(process)
