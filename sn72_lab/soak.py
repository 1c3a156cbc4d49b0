"""`sn72-soak`: validator-like traffic against an offline miner for a long while, with what a box does to it.

An hour by default (`--minutes`): one validator queries at about `--rate` requests a second (below the production
rate limit) with distinct native-size JPEGs (640x480 to 1920x1080) and a validator's 9 s timeout; every
`--reload-every-s` the cascade's model is swapped for a second one and the miner reloaded (SIGHUP, as pm2's
`sendSignal` does), halfway the expert's worker process is killed (`kill -9`, as the OOM killer would), and the
active-learning store keeps every request on a small disk that is nearly full from the start (a tmpfs of
`--disk-mb`, mounted in a mount namespace of the miner's own: `unshare`, or skipped with the reason when this box
allows neither that nor a mount). Every `--sample-s` it records the miner's RSS (with its worker processes), open
fds, and the answers of the window (model answers, prior answers, failures, p50/p99); at the end
`OUT/soak.json`, `OUT/soak.png` (matplotlib) and a verdict against the line in `soak_report.Line`.

The suite runs a one-minute version (tests/e2e/test_soak.py); the figures of the full hour go in the notes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sn72_lab.loadtest import scrape
from sn72_lab.soak_report import Sample, Soak, verdict, write_report
from sn72_tools.client import Outcome, axon_info, encode_jpeg, make_dendrite, query, synthetic_image

NATIVE_SIZES = ((640, 480), (1280, 720), (1920, 1080), (1024, 768))
PRIOR = 0.5  # the soak cascade's prior: what the miner answers when no model did
RELOADED = ("models", "calibration", "unchanged")  # sn72_miner_reloads_total outcomes that left a cascade serving


@dataclass(frozen=True)
class Plan:
    minutes: float = 60.0
    rate_per_s: float = 1.5
    reload_every_s: float = 600.0
    kill_worker_at: float = 0.5  # share of the run
    disk_mb: int = 16
    free_kb: int = 512  # what the filler leaves free on that disk
    sample_s: float = 5.0
    timeout_s: float = 9.0


@dataclass
class Traffic:
    """Requests sent by one validator at a jittered rate, each recorded when answered (thread of its own)."""

    target: Any
    rate_per_s: float
    timeout_s: float
    records: list[tuple[float, Outcome]] = field(default_factory=list)  # (sent, outcome), monotonic
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self, wallet: Any, port: int, hotkey: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self._run(wallet, port, hotkey)), daemon=True,
                                  name="soak-validator")
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    async def _run(self, wallet: Any, port: int, hotkey: str) -> None:
        dendrite = make_dendrite(wallet)
        axon = axon_info("127.0.0.1", port, hotkey)
        jitter = random.Random(0)
        images = [encode_jpeg(synthetic_image(seed, NATIVE_SIZES[seed % len(NATIVE_SIZES)]), quality=85)
                  for seed in range(64)]
        pending: set[asyncio.Task[None]] = set()

        async def one(image: str) -> None:
            sent = time.monotonic()
            outcome = await query(dendrite, axon, image, self.timeout_s)
            self.records.append((sent, outcome))

        try:
            n = 0
            while not self._stop.is_set():
                task = asyncio.ensure_future(one(images[n % len(images)]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                n += 1
                await asyncio.sleep(jitter.uniform(0.5, 1.5) / self.rate_per_s)
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await dendrite.aclose_session()


def cascade(models: Path, vit: str) -> dict[str, Any]:
    """Tiny ViT in a worker process (so there is a worker to kill) beside a tiny YOLO in a thread."""
    return {
        "version": f"soak-{vit}",
        "prior": PRIOR,
        "answer": {"policy": "calibrated"},
        "levels": [{
            "name": "tiny",
            "exit_margin": 0.5,
            "experts": [
                {"name": "vit", "backend": "hf_classifier", "model": str(models / vit), "device": "cpu",
                 "worker": "process", "max_batch": 8, "max_wait_ms": 2.0,
                 "options": {"positive_labels": ["Roadwork"]}},
                {"name": "yolo", "backend": "detector", "model": str(models / "tiny-yolo" / "tiny-yolo.pt"),
                 "device": "cpu", "input_size": 64, "max_batch": 8, "max_wait_ms": 2.0,
                 "options": {"classes": ["cone", "barrier", "construction sign"]}},
            ],
        }],
    }


def build_models(models: Path) -> None:
    from sn72_lab.tiny_models import build_tiny_vit, build_tiny_yolo

    for seed, name in enumerate(("vit-a", "vit-b")):
        if not (models / name).exists():
            build_tiny_vit(models / name, seed=seed)
    if not (models / "tiny-yolo" / "tiny-yolo.pt").exists():
        build_tiny_yolo(models / "tiny-yolo")


def small_disk_wrap(mount_point: Path, plan: Plan) -> tuple[list[str], str]:
    """A command that mounts a tmpfs of `disk_mb` at `mount_point`, fills it to `free_kb` free, then execs the miner
    (in a user and mount namespace of its own, so nothing outlives the miner); ([], reason) where it cannot."""
    mount_point.mkdir(parents=True, exist_ok=True)
    fill_kb = plan.disk_mb * 1024 - plan.free_kb
    script = (f"mount -t tmpfs -o size={plan.disk_mb}m soak-disk {mount_point} && "
              f"dd if=/dev/zero of={mount_point}/.filler bs=1k count={fill_kb} status=none && exec \"$@\"")
    unshare = shutil.which("unshare")
    if unshare is None:
        return [], "no unshare on this machine: the store is on the ordinary disk"
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m probe {mount_point} && umount {mount_point}"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return [], f"cannot mount a small disk here ({probe.stderr.strip()[:120]}): the store is on the ordinary disk"
    return [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"], ""


def tree_rss_and_fds(pid: int) -> tuple[float, int]:
    """RSS of the miner and its children (MB), and the miner's open fds."""
    import psutil

    try:
        process = psutil.Process(pid)
        rss = process.memory_info().rss + sum(child.memory_info().rss
                                              for child in process.children(recursive=True))
        return rss / 2**20, process.num_fds()
    except psutil.Error:
        return float("nan"), -1


def worker_pids(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children() if "python" in child.name().lower()]
    except psutil.Error:
        return []


def counter(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        have = set(rest.rstrip("}").split(",")) if rest else set()
        if metric == name and all(f"{k}={v}" in have for k, v in labels.items()):
            total += value
    return total


def run(out: Path, plan: Plan, log: Any = print) -> Soak:
    from sn72_lab.offline import make_wallets, run_miner

    out.mkdir(parents=True, exist_ok=True)
    build_models(out / "models")
    wallets = make_wallets(out)
    store = out / "store-disk"
    wrap, disk_note = small_disk_wrap(store, plan)
    log(f"store: {'a nearly full ' + str(plan.disk_mb) + ' MB tmpfs' if wrap else disk_note}")
    extra = {"active_learning": {"enabled": True, "directory": str(store / "al-store"), "sample_rate": 1.0,
                                 "uncertain_band": 0.5, "warn_interval_s": 60.0}}
    soak = Soak(plan=plan.__dict__, disk=disk_note or f"tmpfs {plan.disk_mb} MB, {plan.free_kb} KB free at start")
    duration_s = plan.minutes * 60
    with run_miner(out, wallets.path, wallets.miner, cascade(out / "models", "vit-a"), extra=extra,
                   wrap=wrap) as miner:
        pid = miner.process.pid
        traffic = Traffic(None, plan.rate_per_s, plan.timeout_s)
        thread = traffic.start(wallets.validator, miner.port, miner.hotkey)
        began = time.monotonic()
        next_reload = began + plan.reload_every_s
        kill_at = began + plan.kill_worker_at * duration_s
        killed = False
        reloads_sent = 0
        vit = "vit-a"
        last_sample = began
        while (now := time.monotonic()) < began + duration_s and miner.alive():
            if now >= next_reload:
                vit = "vit-b" if vit == "vit-a" else "vit-a"
                (out / "cascade.yaml").write_text(yaml.safe_dump(cascade(out / "models", vit)))
                os.kill(pid, signal.SIGHUP)
                soak.events.append({"t_s": round(now - began, 1), "event": f"reload to {vit}"})
                log(f"{now - began:7.0f}s reload to {vit}")
                next_reload += plan.reload_every_s
                reloads_sent += 1
            # Not while a reload is still loading: the kill would hit the new cascade's worker (refused, the old
            # one kept serving: right, but not the event this step is for).
            if not killed and now >= kill_at and reloads_done(miner.metrics_port) >= reloads_sent:
                workers = worker_pids(pid)
                for worker in workers:
                    os.kill(worker, signal.SIGKILL)
                soak.events.append({"t_s": round(now - began, 1), "event": f"kill -9 worker {workers}"})
                log(f"{now - began:7.0f}s kill -9 worker process(es) {workers}")
                killed = True
            if now - last_sample >= plan.sample_s:
                soak.samples.append(sample(traffic, miner.metrics_port, pid, began, last_sample, now, plan))
                log(soak.samples[-1].line())
                last_sample = now
            time.sleep(0.2)
        traffic.stop()
        thread.join(plan.timeout_s + 5)
        soak.alive_at_end = miner.alive()
        soak.final = final_counts(miner.metrics_port) if miner.alive() else {}
        soak.answers = tally(traffic.records, plan.timeout_s)
        (out / "miner.log").write_text("\n".join(miner.lines) + "\n")
    soak.verdict = verdict(soak)
    write_report(soak, out)
    return soak


def sample(traffic: Traffic, metrics_port: int, pid: int, began: float, start: float, end: float,
           plan: Plan) -> Sample:
    window = [outcome for sent, outcome in list(traffic.records) if start <= sent < end]
    rss_mb, fds = tree_rss_and_fds(pid)
    return Sample(t_s=round(end - began, 1), rss_mb=round(rss_mb, 1), fds=fds,
                  **tally(window, plan.timeout_s), metrics=final_counts(metrics_port))


def tally(outcomes: Any, timeout_s: float) -> dict[str, Any]:
    """Model answers, prior answers and failures (no valid answer in time) with the model answers' p50/p99."""
    outcomes = [o[1] if isinstance(o, tuple) else o for o in outcomes]
    answered = [o for o in outcomes if o.ok and o.latency_s <= timeout_s]
    model = [o for o in answered if o.prediction != PRIOR]
    latencies = sorted(o.latency_s * 1000 for o in model)

    def point(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else float("nan")

    return {"sent": len(outcomes), "model": len(model), "prior": len(answered) - len(model),
            "failed": len(outcomes) - len(answered), "p50_ms": point(0.5), "p99_ms": point(0.99)}


def reloads_done(metrics_port: int) -> float:
    return final_counts(metrics_port).get("reloads", 0.0)


def final_counts(metrics_port: int) -> dict[str, float]:
    try:
        samples = scrape(metrics_port)
    except OSError:
        return {}
    return {
        "reloads_ok": sum(counter(samples, "sn72_miner_reloads_total", outcome=kind) for kind in RELOADED),
        "reloads": counter(samples, "sn72_miner_reloads_total"),
        "worker_restarts": counter(samples, "sn72_miner_worker_restarts"),
        "worker_exits": counter(samples, "sn72_miner_worker_exits"),
        "al_written": counter(samples, "sn72_miner_active_learning_total", kind="written"),
        "al_write_errors": counter(samples, "sn72_miner_active_learning_total", kind="dropped_write_error"),
        "al_skipped_no_image": counter(samples, "sn72_miner_active_learning_total", kind="skipped_no_image"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the set-up and the report")
    parser.add_argument("--minutes", type=float, default=Plan.minutes)
    parser.add_argument("--rate", type=float, default=Plan.rate_per_s, help="the validator's requests a second")
    parser.add_argument("--reload-every-s", type=float, default=Plan.reload_every_s)
    parser.add_argument("--kill-worker-at", type=float, default=Plan.kill_worker_at,
                        help="share of the run at which the worker process is killed (>1: never)")
    parser.add_argument("--disk-mb", type=int, default=Plan.disk_mb, help="size of the store's small disk")
    parser.add_argument("--sample-s", type=float, default=Plan.sample_s)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_s <= 0 or args.disk_mb < 2:
        print("error: --minutes, --rate and --sample-s must be > 0 and --disk-mb >= 2", file=sys.stderr)
        return 2
    plan = Plan(minutes=args.minutes, rate_per_s=args.rate, reload_every_s=args.reload_every_s,
                kill_worker_at=args.kill_worker_at, disk_mb=args.disk_mb, sample_s=args.sample_s)
    soak = run(args.out, plan)
    print(soak.summary())
    return 0 if soak.verdict["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
