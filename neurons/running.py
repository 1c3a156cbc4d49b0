"""The miner already running for a config, as the miner's own tools find it (`sn72-miner reload`, `--check`).

A running miner answers `/status` on its metrics port (neurons/health.py) with its pid, phase, serving version and
last reload. That answer alone proves little (a miner of another config, or one in a container whose pids are not
this machine's, may answer there), so the pid it reports must also be a process here that listens on the config's
axon port. Never found through pm2: the miner may run without it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from neurons.config import MinerConfig

STATUS_TIMEOUT_S = 2.0
_MINER_COMMANDS = ("neurons.miner", "sn72-miner")


class NotRunning(RuntimeError):
    """No miner of this config is running (or it cannot be told apart); `str()` says why and what to do."""


@dataclass(frozen=True)
class RunningMiner:
    pid: int
    status: dict[str, Any]  # the last `/status` answer

    @property
    def phase(self) -> str:
        return str(self.status.get("phase", "unknown"))

    @property
    def serving(self) -> str:
        return str(self.status.get("serving", "unknown"))


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a listener bound to `host` (a wildcard is reached on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def status_url(config: MinerConfig) -> str:
    host = connect_host(config.metrics.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{config.metrics.port}/status"


def read_status(config: MinerConfig, timeout_s: float = STATUS_TIMEOUT_S) -> dict[str, Any] | None:
    """The `/status` answer of the metrics port named in `config`; None when nothing listens there.

    NotRunning when something answers that is not an sn72 miner's status (another program, or a miner built before
    `/status` existed).
    """
    url = status_url(config)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        raise NotRunning(f"{url} answers {exc.code}: the metrics port is held by something that is not this version "
                         f"of the sn72 miner") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    try:
        status = json.loads(body)
    except ValueError as exc:
        raise NotRunning(f"{url} answers something that is not a miner's status") from exc
    if not isinstance(status, dict) or not isinstance(status.get("pid"), int):
        raise NotRunning(f"{url} answers something that is not a miner's status")
    return status


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` (of this machine) holds a listening TCP socket on `port`."""
    import psutil

    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections)


def find_running(config: MinerConfig) -> RunningMiner:
    """The miner running for `config`: its metrics port answers `/status`, and the pid it reports listens on the
    config's axon port. NotRunning otherwise, saying which of the two failed."""
    if not config.metrics.port:
        raise NotRunning("metrics.port is 0 in this config: the miner's tools follow a running miner through its "
                         "metrics port (/status); set metrics.port (takes a restart), or signal it by hand: "
                         "kill -HUP <pid> and read its log")
    status = read_status(config)
    where = f"{config.metrics.host}:{config.metrics.port}"
    if status is None:
        raise NotRunning(f"no miner is running for this config: nothing answers on its metrics port {where}")
    pid = status["pid"]
    if not listens_on(pid, config.axon.port):
        raise NotRunning(f"the miner answering on {where} reports pid {pid}, which is no process of this machine "
                         f"listening on axon port {config.axon.port} (another config's miner, or a container's pid: "
                         f"run the command where the miner runs)")
    return RunningMiner(pid, status)


def miner_listening_on(port: int) -> int | None:
    """The pid of an sn72 miner process listening on `port`, when it is one we may inspect; None otherwise."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                command = " ".join(psutil.Process(conn.pid).cmdline())
                return conn.pid if any(name in command for name in _MINER_COMMANDS) else None
    except (psutil.Error, OSError):
        return None
    return None
