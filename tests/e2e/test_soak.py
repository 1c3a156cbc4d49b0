"""The soak in one minute: validator-like traffic through the real axon while the miner is reloaded twice, its
worker process is killed with SIGKILL, and its active-learning store sits on a nearly full disk (sn72_lab/soak.py).
The full hour runs as `sn72-soak --out DIR`; its figures are in the notes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.bench]


def test_a_minute_of_traffic_survives_reloads_a_worker_kill_and_a_full_disk(tmp_path: Path):
    out = tmp_path / "soak"
    done = subprocess.run([sys.executable, "-m", "sn72_lab.soak", "--out", str(out), "--minutes", "1",
                           "--reload-every-s", "20", "--sample-s", "5"],
                          capture_output=True, text=True, timeout=400)
    tail = done.stdout[-3000:] + done.stderr[-3000:]
    soak = json.loads((out / "soak.json").read_text())
    assert done.returncode == 0, tail
    assert soak["verdict"]["pass"] is True, soak["verdict"]
    events = [event["event"] for event in soak["events"]]
    assert sum(event.startswith("reload") for event in events) == 2, events
    assert sum(event.startswith("kill -9") for event in events) == 1, events
    answers = soak["answers"]
    assert answers["sent"] >= 40 and answers["failed"] == 0, answers
    assert soak["final"]["reloads_ok"] == 2, soak["final"]
    # The killed worker came back (the gauge of the replica serving at the time counted it).
    assert max(sample["metrics"].get("worker_restarts", 0) for sample in soak["samples"]) >= 1
    if soak["disk"].startswith("tmpfs"):
        # The store filled its disk and kept failing to write, counted, while every request was still answered.
        assert soak["final"]["al_write_errors"] > 0, soak["final"]
    assert (out / "soak.png").stat().st_size > 10_000
