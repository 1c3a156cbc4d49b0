"""The loop's live comparison: paired by image, misses charged as wrong answers, intervals that can exclude 0."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from sn72_lab.loop_steps import live_comparison


def write(path: Path, labels: np.ndarray, predictions: np.ndarray, status: np.ndarray) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "sha256", "label", "prediction", "status_code", "latency_ms"])
        for i, (y, p, s) in enumerate(zip(labels, predictions, status, strict=True)):
            writer.writerow([f"img{i}.jpg", f"{i:064x}", int(y), float(p), int(s), 3.0])


def test_a_real_improvement_is_beyond_its_interval_and_misses_count_as_wrong(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    before = np.where(rng.random(400) < 0.7, labels, 1 - labels).astype(float)  # 70% right
    after = np.where(rng.random(400) < 0.9, labels, 1 - labels).astype(float)  # 90% right
    ok = np.full(400, 200)
    write(tmp_path / "before.csv", labels, before, ok)
    missed = ok.copy()
    missed[:40] = 0  # 40 requests the miner never answered: a validator scores them 0
    write(tmp_path / "after.csv", labels, after, missed)
    result = live_comparison(tmp_path / "before.csv", tmp_path / "after.csv", seed=0, rounds=1000)
    assert result["images"] == 400 and result["after"]["missed"] == 40 and result["before"]["missed"] == 0
    right_after = np.where(np.arange(400) < 40, False, after == labels)
    assert result["accuracy"]["after"] == float(right_after.mean())
    difference = result["difference"]
    assert difference["low"] > 0
    assert difference["estimate"] == result["after"]["estimate"] - result["before"]["estimate"]
    # the same answers twice: a difference of exactly 0
    same = live_comparison(tmp_path / "before.csv", tmp_path / "before.csv", seed=0, rounds=1000)["difference"]
    assert same["low"] == same["estimate"] == same["high"] == 0.0
