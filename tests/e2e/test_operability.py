"""The running miner as an operator sees it: health probes, a scrape the dashboard and alerts can use, its log file."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sn72_lab.hostile.wire import HostileRequest, Target, build
from sn72_lab.offline import ROOT, free_port, make_wallets
from sn72_lab.tiny_models import build_tiny_vit
from sn72_tools.client import encode_jpeg, synthetic_image
from tests.factories.cascades import cascade_of, level, vit_expert
from tests.factories.dendrites import ask

pytestmark = pytest.mark.slow
DEPLOY = ROOT / "deploy"


class Miner:
    """`python -m neurons.miner` with its stderr pumped into `lines`; READY is an event, not a sleep."""

    def __init__(self, folder: Path, wallets: Any, model: Path, **sections: Any) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.hotkey = wallets.miner.hotkey.ss58_address
        tiny = cascade_of(level(vit_expert(model, warmup_batches=3), name="l1", exit_margin=None), version="ops")
        (folder / "cascade.yaml").write_text(yaml.safe_dump(tiny))
        config: dict[str, Any] = {
            "wallet": {"name": "miner", "hotkey": "default", "path": str(wallets.path)},
            "chain": {"offline": True, "metagraph_file": str(folder / "metagraph.json")},
            "axon": {"host": "127.0.0.1", "port": self.port, "external_ip": "127.0.0.1"},
            "metrics": {"port": self.metrics_port},
            "active_learning": {"enabled": True, "directory": str(folder / "al")},
            "cascade_file": "cascade.yaml", "drain_timeout_s": 20.0,
        }
        for key, value in sections.items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        (folder / "miner.yaml").write_text(yaml.safe_dump(config))
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "neurons.miner", "--config", str(folder / "miner.yaml")], cwd=ROOT,
            env={**os.environ, "HOME": str(folder), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip())
            if "MINER READY" in line:
                self.ready.set()

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        if not self.ready.wait(timeout_s):
            raise AssertionError("miner not ready:\n" + "\n".join(self.lines[-30:]))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ops")
    return folder, make_wallets(folder), build_tiny_vit(folder / "models" / "tiny-vit")


def fresh(assets: Any, name: str) -> Path:
    folder = assets[0] / name
    folder.mkdir()
    shutil.copy(assets[0] / "metagraph.json", folder / "metagraph.json")
    return folder


def first_answer(miner: Miner, path: str, timeout_s: float = 120.0) -> tuple[int, str]:
    """The first answer of the metrics port once it accepts connections (it binds before anything loads)."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        assert miner.process.poll() is None, "\n".join(miner.lines)
        try:
            return miner.get(path)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.02)
    raise AssertionError("the metrics port never answered")


def test_health_probes_before_during_and_after_start_up_and_while_draining(assets):
    miner = Miner(fresh(assets, "health"), assets[1], assets[2])
    try:
        status, phase = first_answer(miner, "/readyz")
        assert not miner.ready.is_set()
        assert status == 503 and phase.strip() in ("starting", "loading")
        assert miner.get("/healthz") == (200, "ok\n")
        # The axon's port answers at once as well: 503 with the reason, not a wait until the caller's
        # timeout in the listen backlog. Only a miner that became ready meanwhile may answer otherwise.
        started_s = time.monotonic()
        early = http.client.HTTPConnection("127.0.0.1", miner.port, timeout=5)
        early.request("POST", "/ImageSynapse", body=b"{}", headers={"Content-Type": "application/json"})
        reply = early.getresponse()
        assert (reply.status == 503 and b"starting" in reply.read()) or miner.ready.wait(10), reply.status
        assert time.monotonic() - started_s < 2.0
        early.close()
        miner.wait_ready()
        assert miner.get("/readyz") == (200, "ready\n")
        # A validator's request whose body is still arriving holds the drain open: the probe must say so meanwhile.
        # Signed, so it is let in to read its body (an unsigned head is refused at once, and since 6 December its
        # connection closes a second later: with a fixed pause, a slow box sent SIGTERM after that second).
        head, body = build(HostileRequest(signer=assets[1].validator.hotkey, image=encode_jpeg(synthetic_image(3))),
                           Target("127.0.0.1", miner.port, miner.hotkey))
        slow = socket.create_connection(("127.0.0.1", miner.port))
        slow.sendall(head + body[:10])
        wait_until(lambda: http_requests(miner, "active") == 1)  # verified and reading its body
        miner.process.send_signal(signal.SIGTERM)
        wait_until(lambda: miner.get("/readyz") == (503, "draining\n"))
        # the probe flips before the drain's log line is written and read back: wait for the line, not assume it
        wait_until(lambda: any("draining: listener closed" in line for line in miner.lines))
        assert any("draining: listener closed, 1 connections open" in line for line in miner.lines), [
            line for line in miner.lines if "draining" in line]
        assert miner.get("/healthz") == (200, "ok\n")
        slow.close()
        assert miner.process.wait(60) == 0
    finally:
        miner.stop()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        miner.get("/healthz")


def http_requests(miner: Miner, state: str) -> float:
    """`sn72_miner_http_requests{state=...}` as the miner's metrics endpoint says now."""
    text = miner.get("/metrics")[1]
    return next(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == "sn72_miner_http_requests" and sample.labels.get("state") == state)


def wait_until(condition: Any, timeout_s: float = 30.0) -> None:
    until = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < until, "condition not reached"
        time.sleep(0.02)


# -- metrics ----------------------------------------------------------------------------------------

def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "sn72-miner.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_queries() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def selectors(expr: str) -> Iterator[str]:
    """Metric names of every vector selector in a PromQL expression (parsed, so a syntax error fails here)."""
    import promql_parser

    stack: list[Any] = [promql_parser.parse(expr.replace("$__rate_interval", "5m"))]
    while stack:
        node = stack.pop()
        if type(node).__name__ == "VectorSelector":
            yield node.name
        for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None:
                stack.append(child)
        stack.extend(getattr(node, "args", None) or [])


def test_a_scrape_has_every_series_the_dashboard_and_alerts_query(assets):
    miner = Miner(fresh(assets, "scrape"), assets[1], assets[2])
    try:
        miner.wait_ready()
        wallets = assets[1]
        outcomes = ask(miner, wallets.validator, [encode_jpeg(synthetic_image(i)) for i in range(4)])
        assert all(o.status_code == 200 for o in outcomes)
        assert ask(miner, wallets.stranger, [encode_jpeg(synthetic_image(9))])[0].status_code == 403
        status, text = miner.get("/metrics")
    finally:
        assert miner.stop() == 0
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {sample.name for family in families.values() for sample in family.samples}
    queried = {name for expr in dashboard_queries() + alert_queries() for name in selectors(expr)}
    # `up` is Prometheus's own series; GPU memory exists only where the cascade runs on a GPU, the worker series only
    # where a replica runs in a worker process (tests/integration/test_worker_process.py reads restarts and stages,
    # tests/e2e/test_bench_axon_vs_stock.py busy and stages from a miner's /metrics).
    workers = {"sn72_miner_worker_restarts", "sn72_miner_worker_exits", "sn72_miner_worker_busy_seconds",
               "sn72_miner_worker_stage_seconds"}
    missing = queried - samples - {"up", "sn72_miner_gpu_memory_bytes"} - workers
    assert not missing, f"queried but not exported: {sorted(missing)}"
    assert len(queried) >= 25
    gauges = ("sn72_miner_ready", "sn72_miner_state", "sn72_miner_in_flight", "sn72_miner_waiting",
              "sn72_miner_queue_depth", "sn72_miner_replica_healthy", "sn72_miner_registered", "sn72_miner_uid",
              "sn72_miner_metagraph_age_seconds", "sn72_miner_active_learning_queue_depth",
              "sn72_miner_active_learning_store_open", "process_resident_memory_bytes")
    assert {name: families[name].type for name in gauges} == dict.fromkeys(gauges, "gauge")
    assert families["sn72_miner_active_learning"].type == "counter"
    assert families["sn72_miner_request_latency_seconds"].type == "histogram"
    assert families["sn72_miner_build_info"].type == "gauge"  # an Info, as the text format carries it
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("sn72_miner_ready", ())] == 1.0 and value[("sn72_miner_registered", ())] == 1.0
    assert value[("sn72_miner_axon_total", (("outcome", "refused_unregistered"),))] == 1.0
    answered = sum(v for (name, labels), v in value.items() if name == "sn72_miner_requests_total")
    assert answered == 4
    build = next(s.labels for s in families["sn72_miner_build_info"].samples)
    assert build["cascade_version"].startswith("ops+id.")  # served version: the YAML's, then the models' digest
    assert build["version"] and build["calibration"].startswith("yaml:")


def test_the_rule_and_compose_files_are_valid(tmp_path):
    for expr in dashboard_queries() + alert_queries():
        assert list(selectors(expr)), expr
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["job_name"] == "sn72-miner"  # the job the alerts name
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # the parse above is the check; promtool (Debian package `prometheus`) adds its own where present
    done = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_log_file_stays_within_its_size_under_a_refusal_flood(assets):
    folder = fresh(assets, "flood")
    rotation_bytes = 20_000
    miner = Miner(folder, assets[1], assets[2], log_level="DEBUG", summary_interval_s=1.0,
                  logs={"file": str(folder / "logs" / "miner.log"), "rotation_mb": rotation_bytes / 1e6,
                        "retention": 3, "compression": "gz"})
    try:
        miner.wait_ready()
        connection = http.client.HTTPConnection("127.0.0.1", miner.port, timeout=10)
        for _ in range(1500):  # unsigned requests: refused before the signature check, each one a DEBUG line
            connection.request("POST", "/ImageSynapse", body=b'{"image": ""}',
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status in (401, 403)
        connection.close()
    finally:
        assert miner.stop() == 0
    logs = folder / "logs"
    current = logs / "miner.log"
    rotated = sorted(p for p in logs.iterdir() if p != current)
    assert current.stat().st_size <= rotation_bytes + 1_000
    assert 1 <= len(rotated) <= 3 and all(p.suffix == ".gz" for p in rotated), rotated
    text = current.read_text()
    assert "axon: refused_" in text and "\x1b[" not in text  # no colour codes in the file
    assert any("summary last" in line and "refused or closed" in line for line in miner.lines)
