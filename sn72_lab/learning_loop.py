"""`sn72-loop`: the whole learning loop on a generated task, offline, with the operator's own commands.

    sn72-loop --out runs/loop --seeds 0 1 2            # ~4-16 minutes a seed on a 2-core CPU
    sn72-loop --out runs/loop-small --small --seeds 0  # small images and sets: a few minutes

Per seed, on generated street scenes (sn72_tools/training/streets.py) and a small CNN (sn72_lab/tiny_models.py):
 1. sets: an initial training set, a pool of validator-like traffic, a frozen judge set, an unseen set, and a
    second fit set for the controls; every one labelled, none sharing an image;
 2. the initial model: `sn72-train` from random weights on the initial set; the miner serves it (offline,
    `python -m neurons.miner`, its active-learning store on);
 3. live before: the unseen set through the real axon (`sn72-query`, a real dendrite) -> predictions;
 4. traffic: the pool through the axon; the miner keeps what it finds hard in its store;
 5. label: `sn72-al label --folder POOL` (a person labelling what the store kept);
 6. train: `sn72-train STORE INITIAL --model <served model> --exclude JUDGE UNSEEN` (dev and fit drawn from images
    new to the served model), then `--refit --cascade <served cascade>`: a candidate;
 7. promote: `sn72-promote` on the frozen judge set (exit 0 expected), then SIGHUP and the reload's outcome;
 8. live after: the unseen set again -> the paired difference in live MCC with its interval;
 9. controls, each expected to be refused (exit 3) with nothing changed: the served model recalibrated on another
    fit set (equal within noise), the initial model recalibrated (worse), a random model fitted (no skill).
The report (OUT/report.json, OUT/report.txt) has one row per seed and says whether each run met the bar: live MCC
raised beyond its 95% interval, every control refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sn72_lab import loop_steps as steps


@dataclass(frozen=True)
class Sizes:
    initial: int = 300
    pool: int = 2400
    judge: int = 400
    unseen: int = 600
    control_fit: int = 300
    max_side: int | None = None  # None: native sizes, 480x480 to 1920x1080
    initial_epochs: int = 10
    epochs: int = 10
    learning_rate: float = 3e-3  # the small CNN's recipe on this task (docs/training.md)
    batch_size: int = 16
    min_fit_images: int = 200


SMALL = Sizes(initial=200, pool=1200, judge=300, unseen=300, control_fit=240, max_side=320, initial_epochs=8,
              epochs=8, min_fit_images=100)


def _sets(root: Path, seed: int, sizes: Sizes) -> dict[str, Path]:
    from sn72_tools.training.streets import FULL_SIZES, make_street_folder, scaled_sizes

    shapes = scaled_sizes(sizes.max_side) if sizes.max_side else FULL_SIZES
    sets = {}
    for offset, (name, count) in enumerate((("initial", sizes.initial), ("pool", sizes.pool),
                                            ("judge", sizes.judge), ("unseen", sizes.unseen),
                                            ("control-fit", sizes.control_fit)), start=1):
        folder = root / "sets" / name
        if not (folder / "1").is_dir():
            make_street_folder(folder, count, seed=1000 * seed + offset, sizes=shapes, workers=2)
        sets[name] = folder
    return sets


def _cascade(model: Path) -> dict[str, Any]:
    return {"version": "loop", "release": "0.1.0", "levels": [{"name": "cnn", "exit_margin": 0.5, "experts": [
        {"name": "cnn", "backend": "hf_classifier", "model": str(model), "device": "cpu", "max_batch": 32,
         "max_wait_ms": 2.0, "warmup_batches": 1, "memory_gb": 0.1}]}]}


def _miner_extra(root: Path) -> dict[str, Any]:
    # The loop's validator is the operator's own: no rate limit; a labelling budget that keeps a quarter of the
    # traffic besides the uncertain answers (an operator who labels what he can would set as much).
    return {"guards": {"rate_per_s": 0.0}, "log_level": "INFO",
            "active_learning": {"enabled": True, "directory": str(root / "al-store"), "uncertain_band": 0.2,
                                "sample_rate": 0.25}}


def one_seed(out: Path, seed: int, sizes: Sizes, log: Any) -> dict[str, Any]:
    from cascade.observers.al_store import ALStore
    from sn72_lab.offline import make_wallets, run_miner
    from sn72_lab.tiny_models import build_small_cnn
    from sn72_tools.al.export import summary
    from sn72_tools.promotion.candidate import write_candidate

    root = out / f"seed-{seed}"
    for stale in ("runs", "miner", "al-store", "controls", "logs", "eval-cache"):  # an earlier run's (sets are kept)
        shutil.rmtree(root / stale, ignore_errors=True)
    logs = root / "logs"
    seconds: dict[str, float] = {}
    began = time.monotonic()
    log(f"seed {seed}: generating the sets")
    sets = _sets(root, seed, sizes)
    seconds["sets"] = time.monotonic() - began
    cnn = build_small_cnn(root / "models" / "random-cnn", seed=seed)
    def recipe(epochs: int) -> list[str]:
        return ["--epochs", str(epochs), "--lr", str(sizes.learning_rate), "--batch-size", str(sizes.batch_size),
                "--seed", str(seed), "--no-progress"]

    log(f"seed {seed}: training the initial model on {sizes.initial} images")
    initial = steps.run_tool("train-initial", "sn72_tools.training.cli",
                             [str(sets["initial"]), "--model", str(cnn), "--out", str(root / "runs" / "initial"),
                              "--fit-share", "0", "--no-eval", *recipe(sizes.initial_epochs)], logs)
    seconds["initial"] = initial.seconds
    wallets = make_wallets(root / "miner")  # wallets and the metagraph file, beside the miner's config
    served = root / "miner" / "cascade.yaml"
    served.parent.mkdir(parents=True, exist_ok=True)
    query = ["--wallet.name", "validator", "--wallet.path", str(wallets.path), "--rate", "0", "--concurrency", "8",
             "--timeout", "30"]
    report: dict[str, Any] = {"seed": seed, "sizes": asdict(sizes)}
    with run_miner(served.parent, wallets.path, wallets.miner, _cascade(root / "runs" / "initial" / "model"),
                   extra=_miner_extra(root)) as miner:
        target = ["--miner", f"127.0.0.1:{miner.port}", "--miner-hotkey", miner.hotkey]
        log(f"seed {seed}: live before, {sizes.unseen} unseen images through the axon")
        steps.run_tool("query-before", "sn72_tools.query", [str(sets["unseen"]), *query, *target, "--predictions",
                                                         str(root / "before.csv")], logs, ok=(0, 1))
        log(f"seed {seed}: {sizes.pool} images of traffic; the store keeps the hard ones")
        traffic = steps.run_tool("query-pool", "sn72_tools.query", [str(sets["pool"]), *query, *target, "--json",
                                                                 str(root / "pool.json")], logs, ok=(0, 1))
        seconds["traffic"] = traffic.seconds
        labelled = steps.run_tool("label", "sn72_tools.al.cli",
                                  ["label", "--store", str(root / "al-store"), "--folder", str(sets["pool"])], logs)
        with ALStore(root / "al-store", writer=False) as store:
            report["store"] = summary(store)
        log(f"seed {seed}: the store kept {report['store']['items']} images; retraining")
        retrain = steps.run_tool("train", "sn72_tools.training.cli",
                                 [str(root / "al-store"), str(sets["initial"]), "--model",
                                  str(root / "runs" / "initial" / "model"), "--out", str(root / "runs" / "retrain"),
                                  "--exclude", str(sets["judge"]), str(sets["unseen"]), *recipe(sizes.epochs)], logs,
                                 ok=(0, 3))
        seconds["train"] = retrain.seconds + labelled.seconds
        report["train_exit"] = retrain.code
        record = json.loads((root / "runs" / "retrain" / "model" / "sn72_train.json").read_text())
        report["train"] = {"verdict": record.get("verdict"), "data": record["data"]}
        promote_args = ["--cascade", str(served), "--judge", str(sets["judge"]), "--cache",
                        str(root / "eval-cache"), "--latency-sample", "20", "--no-progress"]
        if retrain.code == 0:
            steps.run_tool("refit", "sn72_tools.training.cli",
                           ["--out", str(root / "runs" / "retrain"), "--refit", "--cascade", str(served),
                            "--min-fit-images", str(sizes.min_fit_images), "--no-progress"], logs)
            log(f"seed {seed}: judging the candidate against the served cascade")
            promoted = steps.run_tool("promote", "sn72_tools.promotion.cli",
                                      [*promote_args, "--candidate",
                                       str(root / "runs" / "retrain" / "candidate" / "candidate.yaml")], logs,
                                      ok=(0, 3))
            report["promote_exit"] = promoted.code
            report["promotion"] = _latest_report(served)
            if promoted.code == 0:
                report["reload"] = steps.wait_for_reload(miner.process, miner.metrics_port)
        log(f"seed {seed}: live after, the unseen set again")
        steps.run_tool("query-after", "sn72_tools.query", [str(sets["unseen"]), *query, *target, "--predictions",
                                                        str(root / "after.csv")], logs, ok=(0, 1))
        report["live"] = steps.live_comparison(root / "before.csv", root / "after.csv", seed)
        log(f"seed {seed}: controls (each must be refused)")
        report["controls"] = _controls(root, sets, served, promote_args, logs, write_candidate, build_small_cnn)
    report["seconds"] = {**seconds, "total": time.monotonic() - began}
    report["met"] = bool(report.get("promote_exit") == 0 and report["live"]["difference"]["low"] > 0
                         and all(c["exit"] == 3 and c["unchanged"] for c in report["controls"].values()))
    return report


def _latest_report(served: Path) -> dict[str, Any]:
    history = served.parent / "promotions" / served.stem
    folders = sorted(p for p in history.iterdir() if p.is_dir())
    data = json.loads((folders[-1] / "report.json").read_text())
    return {"decision": data["decision"], "differences": data["differences"],
            "sides": {side: block["metrics"]["mcc"] for side, block in data["sides"].items()}}


def _controls(root: Path, sets: dict[str, Path], served: Path, promote_args: list[str], logs: Path,
              write_candidate: Any, build_small_cnn: Any) -> dict[str, Any]:
    """Candidates that must be refused: recalibrated served model, the initial model, a random model."""
    controls = root / "controls"
    models = {"recalibrated": None, "initial-model": str(root / "runs" / "initial" / "model"),
              "random-model": str(build_small_cnn(root / "models" / "control-random", seed=99))}
    results = {}
    for name, model in models.items():
        folder = controls / name
        base = write_candidate(served, folder, None, None if model is None else {"cnn": model}, name="unfitted.yaml")
        steps.run_tool(f"control-{name}-fit", "sn72_tools.evaluation.cli",
                       [str(sets["control-fit"]), "--cascade", str(base), "--fit", "--holdout", "0", "--out",
                        str(folder), "--cache", str(root / "eval-cache"), "--latency-sample", "0",
                        "--min-fit-images", "100", "--no-progress"], logs)
        before = served.read_bytes()
        step = steps.run_tool(f"control-{name}", "sn72_tools.promotion.cli",
                              [*promote_args, "--candidate", str(folder / "candidate.yaml")], logs, ok=(0, 2, 3))
        results[name] = {"exit": step.code, "unchanged": served.read_bytes() == before,
                         "decision": _latest_report(served)["decision"] if step.code != 2 else step.tail(3)}
    return results


def format_report(reports: list[dict[str, Any]]) -> str:
    header = (f"{'seed':>4} {'store':>6} {'promote':>7} {'live MCC before':>24} {'live MCC after':>24} "
              f"{'difference':>26} {'controls (exit)':>28} {'met':>4}")
    lines = [header, "-" * len(header)]
    for r in reports:
        live = r["live"]

        def interval(block: dict[str, Any]) -> str:
            return f"{block['estimate']:+.3f} [{block['low']:+.3f}, {block['high']:+.3f}]"

        controls = " ".join(f"{name.split('-')[0]}={c['exit']}" for name, c in r["controls"].items())
        lines.append(f"{r['seed']:>4} {r['store']['items']:>6} {r.get('promote_exit', '-'):>7} "
                     f"{interval(live['before']):>24} {interval(live['after']):>24} "
                     f"{interval(live['difference']):>26} {controls:>28} {'yes' if r['met'] else 'NO':>4}")
    lines.append(f"live MCC on {reports[0]['live']['images']} unseen images per seed through the real axon; "
                 "95% intervals (stratified bootstrap; the difference paired); a miss counts as a wrong answer")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sn72-loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the loop's folder (sets, runs, miner, report)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--small", action="store_true", help="small images and sets (a quick run)")
    args = parser.parse_args(argv)
    sizes = SMALL if args.small else Sizes()

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    reports = []
    for seed in args.seeds:
        try:
            reports.append(one_seed(args.out, seed, sizes, log))
        except RuntimeError as exc:
            print(f"error: seed {seed}: {exc}", file=sys.stderr)
            return 2
        (args.out / "report.json").write_text(json.dumps(reports, indent=2) + "\n")
    text = format_report(reports)
    (args.out / "report.txt").write_text(text + "\n")
    print(text)
    return 0 if all(r["met"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
