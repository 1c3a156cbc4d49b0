"""Chain calls are bounded and fail in one line; the miner notices when its hotkey leaves the metagraph."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from neurons.chain import (
    ChainError,
    Neuron,
    RegistrationWatch,
    chain_call,
    connect_chain,
    offline_source,
    watch_registration,
    write_metagraph_json,
)
from sn72_lab.offline import ensure_wallet, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections and never says a word (a chain endpoint that hangs)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def test_a_call_that_hangs_is_abandoned_at_its_timeout():
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(ChainError, match=r"^metagraph sync: no answer within 0\.3 s"):
        chain_call(release.wait, "metagraph sync", timeout_s=0.3)
    assert time.monotonic() - started < 5.0
    release.set()


def test_a_failing_call_becomes_one_line_and_keeps_its_cause():
    def fail() -> None:
        raise ConnectionError("[Errno 111] Connection refused\n  while talking to the chain")

    with pytest.raises(ChainError) as caught:
        chain_call(fail, "serve_axon", timeout_s=5)
    assert str(caught.value) == "serve_axon: [Errno 111] Connection refused while talking to the chain"
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert chain_call(lambda: 42, "answer", timeout_s=5) == 42


def test_an_unreachable_chain_endpoint_fails_fast_in_one_line():
    with pytest.raises(ChainError, match=r"^connecting to the ws://127\.0\.0\.1:\d+ chain: .*refused"):
        connect_chain(f"ws://127.0.0.1:{free_port()}", 72, 600.0, timeout_s=30.0)


@pytest.mark.slow
def test_a_silent_chain_endpoint_times_out(silent_port):
    with pytest.raises(ChainError, match=r"no answer within 1 s"):
        connect_chain(f"ws://127.0.0.1:{silent_port}", 72, 600.0, timeout_s=1.0)


def _scrape(registry: CollectorRegistry) -> tuple[float | None, float | None]:
    return registry.get_sample_value("sn72_miner_registered"), registry.get_sample_value("sn72_miner_uid")


def test_the_watch_reports_deregistration_and_uid_changes_from_the_metagraph_file(tmp_path):
    path = tmp_path / "metagraph.json"
    write_metagraph_json(path, 72, [Neuron(0, "validator", True, 1e4), Neuron(3, "me", False, 0.0)])
    source = offline_source(path, interval_s=0.05)
    registry = CollectorRegistry()
    changed = threading.Event()
    watch = watch_registration(source, "me")
    watch.register_metrics(registry)
    source.subscribe(lambda _snapshot: changed.set())
    changed.clear()  # subscribe calls at once; wait for the file's next version
    source.start()
    try:
        assert _scrape(registry) == (1.0, 3.0)

        def rewrite(neurons: list[Neuron], bump_s: float) -> None:
            changed.clear()
            write_metagraph_json(path, 72, neurons)
            os.utime(path, (time.time() + bump_s, time.time() + bump_s))  # a distinct mtime on coarse clocks
            assert changed.wait(5), "the changed file was not re-read"

        rewrite([Neuron(0, "validator", True, 1e4), Neuron(7, "me", False, 0.0)], 5)
        assert _scrape(registry) == (1.0, 7.0)
        rewrite([Neuron(0, "validator", True, 1e4), Neuron(7, "someone-else", False, 0.0)], 10)
        assert _scrape(registry) == (0.0, -1.0)
        rewrite([Neuron(0, "validator", True, 1e4), Neuron(9, "me", False, 0.0)], 15)
        assert _scrape(registry) == (1.0, 9.0)
    finally:
        source.stop()


def test_the_watch_logs_each_change_once(tmp_path):
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    try:
        watch = RegistrationWatch("me")
        snapshots = [[Neuron(3, "me", False, 0.0)], [Neuron(3, "me", False, 0.0)], [Neuron(5, "me", False, 0.0)], [],
                     []]
        from neurons.chain import MetagraphSnapshot

        for neurons in snapshots:
            watch.observe(MetagraphSnapshot.of(323, neurons))
    finally:
        logger.remove(sink)
    assert len(lines) == 3, lines
    assert "registered on netuid 323 as uid 3" in lines[0]
    assert "uid changed on netuid 323: 3 -> 5" in lines[1]
    assert lines[2].startswith("DEREGISTERED: hotkey me is no longer in the metagraph of netuid 323 (was uid 5)")


@pytest.mark.slow
def test_the_miner_exits_with_one_line_when_the_chain_is_unreachable(tmp_path):
    wallets = tmp_path / "wallets"
    ensure_wallet(wallets, "miner")
    (tmp_path / "cascade.yaml").write_text(yaml.safe_dump(
        {"levels": [{"name": "l", "experts": [{"name": "e", "backend": "hf_classifier", "model": "x/y"}]}]}))
    (tmp_path / "miner.yaml").write_text(yaml.safe_dump({
        "wallet": {"name": "miner", "path": str(wallets)},
        "chain": {"network": f"ws://127.0.0.1:{free_port()}", "netuid": 323, "timeout_s": 20},
        "cascade_file": "cascade.yaml",
    }))
    completed = subprocess.run([sys.executable, "-m", "neurons.miner", "--config", str(tmp_path / "miner.yaml")],
                               cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "HOME": str(tmp_path)})
    assert completed.returncode == 1, completed.stdout + completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "connecting to the ws://127.0.0.1:" in errors[0] and "refused" in errors[0]
    assert "Traceback" not in completed.stderr
