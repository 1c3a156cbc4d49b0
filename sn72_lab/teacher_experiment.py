"""Does training on teacher labels lift a student's judged MCC? The generated street task, a small CNN, a CPU.

    .venv/bin/python -m sn72_lab.teacher_experiment --seeds 0 1 2 --out docs/bench/cpu/2026-12-04/teacher-labels

Per seed S, with the operator's own commands run in process (their `main`), on generated street scenes
(sn72_tools/training/streets.py, every side shrunk to --max-side) and `small-cnn` (sn72_lab/tiny_models.py, init
seed S, 112 px):
 1. sets, none sharing an image: LABELLED (--teacher-train images of seed S; the student's human labels are its
    first --human, the same bytes), POOL (--pool of seed 300+S, its labels hidden from every model), DEV (--dev of
    seed 100+S, early stopping for every run), JUDGE (--judge of seed 200+S: no role in any run, judged only here);
 2. teacher: `sn72-train LABELLED --heldout DEV --refit --cascade base.yaml` (a calibration fitted on the run's
    fit share): the candidate cascade is the teacher;
 3. the POOL goes into an active-learning store (the miner's writer), and `sn72-al teach --cascade <teacher>
    --min-confidence C` labels what the teacher is sure of;
 4. student: `sn72-train HUMAN --heldout DEV --fit-share 0`; student': the same plus `--teacher-labels STORE
    --teacher-weight W` (identical recipe, data seed and init);
 5. both students (and the teacher) answer JUDGE through the real engine (eval mode); the paired, stratified
    bootstrap of MCC(student') - MCC(student) gives a 95% interval per seed, and one for the mean over seeds
    (each seed's judge set resampled in the same round: judge-set noise; the seeds show training noise).
Writes OUT/results.json and OUT/README.md; the work (sets, models, runs) goes to --work.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

RECIPE = ["--epochs", "10", "--lr", "3e-3", "--batch-size", "16", "--resize", "squash"]  # docs/training.md


@dataclass(frozen=True)
class Sizes:
    human: int = 300
    teacher_train: int = 1500
    pool: int = 1500
    dev: int = 300
    judge: int = 600
    max_side: int | None = 640
    min_confidence: float = 0.95
    teacher_weight: float = 0.5


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _quiet(function: Any, argv: list[str], log: Path) -> int:
    """Run a CLI's main in process, its output into `log` (the trainer's tables are long)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = int(function(argv))
    log.write_text(buffer.getvalue())
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:3])}... exited {code}; see {log}:\n{buffer.getvalue()[-2000:]}")
    return code


def _cascade(path: Path, model: Path, version: str) -> Path:
    path.write_text(yaml.safe_dump({"version": version, "release": "0.1.0", "levels": [
        {"name": "cnn", "exit_margin": 0.5, "experts": [
            {"name": "cnn", "backend": "hf_classifier", "model": str(model), "device": "cpu", "max_batch": 32,
             "warmup_batches": 1}]}]}, sort_keys=False))
    return path


def _sets(root: Path, seed: int, sizes: Sizes) -> dict[str, Path]:
    from sn72_tools.training.streets import FULL_SIZES, make_street_folder, scaled_sizes

    shapes = scaled_sizes(sizes.max_side) if sizes.max_side else FULL_SIZES
    sets = {}
    for name, count, data_seed in (("labelled", sizes.teacher_train, seed), ("pool", sizes.pool, 300 + seed),
                                   ("dev", sizes.dev, 100 + seed), ("judge", sizes.judge, 200 + seed)):
        folder = root / "sets" / name
        if not (folder / "1").is_dir():
            began = time.monotonic()
            make_street_folder(folder, count, data_seed, shapes, workers=2)
            say(f"seed {seed}: {name}: {count} images of seed {data_seed} in {time.monotonic() - began:.0f} s")
        sets[name] = folder
    human = root / "sets" / "human"
    if not (human / "1").is_dir():  # the first `human` images of LABELLED: what --images human --seed S writes
        for label in (0, 1):
            (human / str(label)).mkdir(parents=True)
            for file in sorted((sets["labelled"] / str(label)).glob("*.jpg")):
                if int(file.stem.rsplit("-", 1)[1]) < sizes.human:
                    os.link(file, human / str(label) / file.name)
    sets["human"] = human
    return sets


def _fill_store(store: Path, pool: Path) -> dict[str, int]:
    """The pool as the miner keeps it (its writer, reason `uncertain`, no label); returns sha256 -> true label."""
    import hashlib

    from cascade.observers.al_store import ALStore, Reason, Sample

    truth = {}
    with ALStore(store) as writer:
        for i, file in enumerate(sorted(pool.rglob("*.jpg"))):
            data = file.read_bytes()
            truth[hashlib.sha256(data).hexdigest()] = int(file.parent.name)
            writer.add(Sample(image=data, reason=Reason.UNCERTAIN, created_at=1_000_000.0 + i, hotkey="experiment"))
    return truth


def _answers(cascade_path: Path, folder: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, P(roadwork), names) of the cascade on a labelled folder, through the real engine in eval mode."""
    from cascade import consensus
    from cascade.config import load_cascade
    from sn72_tools.evaluation import record, replay
    from sn72_tools.evaluation.datasets import open_source

    cascade = load_cascade(cascade_path)
    engine = record.EvalEngine(cascade)
    outputs = record.OutputCache(cache)
    try:
        recording = record.record(open_source(folder), cascade, engine, outputs, progress=False)
    finally:
        engine.close()
        outputs.close()
    pooling = consensus.Pooling.from_config(cascade)
    levels = replay.level_probabilities(cascade, pooling, recording.experts, recording.outputs)
    return recording.labels, replay.answers_at(levels, replay.exit_levels(replay.pooling_margins(pooling), levels)), \
        recording.names


def run_seed(work: Path, seed: int, sizes: Sizes) -> dict[str, Any]:
    from cascade.observers.al_store import ALStore
    from sn72_lab.tiny_models import build_small_cnn
    from sn72_tools.al import cli as al_cli
    from sn72_tools.al.teacher import teacher_labels
    from sn72_tools.evaluation.bootstrap import metric_interval, paired_difference
    from sn72_tools.training import cli as train_cli

    root = work / f"seed{seed}"
    sets = _sets(root, seed, sizes)
    model = root / "small-cnn"
    if not (model / "config.json").is_file():
        build_small_cnn(model, seed=seed)
    base = _cascade(root / "base.yaml", model, f"teacher-exp-{seed}")
    seconds: dict[str, float] = {}

    def timed(name: str, function: Any, argv: list[str]) -> None:
        began = time.monotonic()
        _quiet(function, argv, root / f"{name}.log")
        seconds[name] = round(time.monotonic() - began, 1)
        say(f"seed {seed}: {name} done in {seconds[name]:.0f} s")

    for name in ("teacher", "student", "student-taught", "store"):
        shutil.rmtree(root / name, ignore_errors=True)
    common = ["--heldout", str(sets["dev"]), "--model", str(model), *RECIPE, "--seed", str(seed), "--no-eval",
              "--no-progress"]
    timed("teacher", train_cli.main, [str(sets["labelled"]), "--out", str(root / "teacher"), *common, "--refit",
                                      "--cascade", str(base), "--min-fit-images",
                                      str(min(100, sizes.teacher_train // 5))])
    teacher_cascade = root / "teacher" / "candidate" / "candidate.yaml"
    truth = _fill_store(root / "store", sets["pool"])
    timed("teach", al_cli.main, ["teach", "--store", str(root / "store"), "--cascade", str(teacher_cascade),
                                 "--min-confidence", str(sizes.min_confidence), "--cache", str(root / "cache"),
                                 "--no-progress"])
    with ALStore(root / "store", writer=False) as store:
        taught = teacher_labels(store)
    right = sum(t.label == truth[t.image_hash] for t in taught)
    timed("student", train_cli.main, [str(sets["human"]), "--out", str(root / "student"), "--fit-share", "0",
                                      *common])
    timed("student-taught", train_cli.main, [str(sets["human"]), "--out", str(root / "student-taught"),
                                             "--fit-share", "0", "--teacher-labels", str(root / "store"),
                                             "--teacher-weight", str(sizes.teacher_weight), *common])
    lineage = json.loads((root / "student-taught" / "model" / "sn72_data.json").read_text())
    judged = {}
    for name, cascade in (("teacher", teacher_cascade),
                          ("student", _cascade(root / "student.yaml", root / "student" / "model", "s")),
                          ("student-taught", _cascade(root / "taught.yaml", root / "student-taught" / "model", "t"))):
        labels, answers, names = _answers(cascade, sets["judge"], root / "cache")
        judged[name] = (labels, answers, names)
    labels = judged["student"][0]
    assert judged["student"][2] == judged["student-taught"][2]  # the same images in the same order
    binary = {name: np.round(answers).astype(int) for name, (_, answers, _) in judged.items()}
    difference = paired_difference(labels, binary["student-taught"], binary["student"], "mcc", rounds=2000,
                                   seed=seed)
    return {
        "seed": seed,
        "teacher_labels": {"pool": len(truth), "labelled": len(taught), "unsure": len(truth) - len(taught),
                           "labelled_1": sum(t.label for t in taught), "accuracy": right / len(taught) if taught else
                           None, "source": taught[0].source if taught else None},
        "student_taught_lineage": {k: v for k, v in lineage.get("teacher_labels", {}).items() if k != "sha256"},
        "judge": {name: metric_interval(labels, binary[name], "mcc", rounds=2000, seed=seed).as_dict()
                  for name in binary},
        "accuracy": {name: float((binary[name] == labels).mean()) for name in binary},
        "difference_mcc": difference.as_dict(),
        "seconds": seconds,
        "_binary": {name: binary[name].tolist() for name in binary},
        "_labels": labels.tolist(),
    }


def pooled_difference(rows: list[dict[str, Any]], rounds: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The mean over seeds of MCC(student') - MCC(student), each seed's judge set resampled (stratified) per round."""
    from sn72_tools.evaluation.bootstrap import mcc_rows, stratified_indices

    means = np.zeros(rounds)
    estimate = 0.0
    for row in rows:
        y = np.array(row["_labels"])
        a, b = np.array(row["_binary"]["student-taught"]), np.array(row["_binary"]["student"])
        picks = stratified_indices(y, rounds, seed + row["seed"])
        means += (mcc_rows(y[picks], a[picks]) - mcc_rows(y[picks], b[picks])) / len(rows)
        estimate += float(mcc_rows(y[None, :], a[None, :])[0] - mcc_rows(y[None, :], b[None, :])[0]) / len(rows)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"estimate": estimate, "low": float(low), "high": float(high), "confidence": 0.95, "seeds": len(rows)}


def _markdown(result: dict[str, Any], command: str) -> str:
    sizes = result["sizes"]
    lines = [
        "# Teacher labels on the generated street task: does a student learn from a stronger model's labels?",
        "",
        f"2-core CPU, {result['created']}. Raw figures: `results.json`. Code: `sn72_lab/teacher_experiment.py`.",
        "",
        "## Command",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Per seed S: teacher = `small-cnn` trained by `sn72-train` on {sizes['teacher_train']} labelled images "
        f"(seed S; its fit share calibrates it via `--refit`), student = the same recipe on the first "
        f"{sizes['human']} of them (`--fit-share 0`), student' = the student's data plus the teacher labels "
        f"`sn72-al teach --min-confidence {sizes['min_confidence']}` wrote on {sizes['pool']} unlabelled images "
        f"(seed 300+S) in an active-learning store, at `--teacher-weight {sizes['teacher_weight']}`. Early stopping "
        f"on {sizes['dev']} images of seed 100+S for every run; judged on {sizes['judge']} images of seed 200+S that "
        f"no run saw. Images shrunk to a longest side of {sizes['max_side']} px, to keep generating and decoding "
        "them within a 2-core CPU budget (the CNN sees 112 px either way). Recipe "
        f"`{' '.join(RECIPE)}` (docs/training.md).",
        "",
        "## Results (judge set; MCC with its 95% stratified bootstrap interval)",
        "",
        "| seed | teacher labels written / pool (accuracy) | teacher MCC | student MCC | student' MCC | "
        "student' - student (95%) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["runs"]:
        t, j, d = row["teacher_labels"], row["judge"], row["difference_mcc"]
        accuracy = "-" if t["accuracy"] is None else f"{t['accuracy']:.3f}"
        lines.append(f"| {row['seed']} | {t['labelled']} / {t['pool']} ({accuracy}) | "
                     f"{j['teacher']['estimate']:.3f} [{j['teacher']['low']:.3f}, {j['teacher']['high']:.3f}] | "
                     f"{j['student']['estimate']:.3f} "
                     f"[{j['student']['low']:.3f}, {j['student']['high']:.3f}] | "
                     f"{j['student-taught']['estimate']:.3f} [{j['student-taught']['low']:.3f}, "
                     f"{j['student-taught']['high']:.3f}] | {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |")
    pooled = result["pooled"]
    lines += [
        "",
        f"**Mean over {pooled['seeds']} seeds: student' - student = {pooled['estimate']:+.3f} MCC, 95% interval "
        f"[{pooled['low']:+.3f}, {pooled['high']:+.3f}]** (each seed's judge set resampled in the same round: the "
        "interval is judge-set noise; how far the seeds spread is training noise).",
        "",
        "Reading it: the teacher learnt from more labels than the student (its run trained on 80% of them, the rest "
        "calibrated it), so the lift is that knowledge handed over through confident labels on images nobody "
        "labelled; the accuracy column is the teacher labels' against the pool's hidden true labels. Student and "
        "student' share recipe, seed, initial weights and early-stopping set; student' trains on more images per "
        "epoch (more steps), which is part of what teacher labels buy. Only the generated task was measured: real "
        "validator images, a teacher that is wrong where it is sure, or one that shares the student's blind spots "
        "can give less or nothing.",
        "",
        "Seconds per seed (teacher run, teach, student, student'): " + "; ".join(
            f"seed {r['seed']}: {r['seconds'].get('teacher')}, {r['seconds'].get('teach')}, "
            f"{r['seconds'].get('student')}, {r['seconds'].get('student-taught')}" for r in result["runs"])
        + f"; the whole run {result['seconds']:.0f} s of wall time on a 2-core machine shared with other work.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="results.json and README.md go here")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sn72-teacher-experiment"),
                        help="sets, models and runs (default /tmp/sn72-teacher-experiment)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    defaults = Sizes()
    for name in ("human", "teacher_train", "pool", "dev", "judge"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--max-side", type=int, default=defaults.max_side)
    parser.add_argument("--min-confidence", type=float, default=defaults.min_confidence)
    parser.add_argument("--teacher-weight", type=float, default=defaults.teacher_weight)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared 2-core box)")
    args = parser.parse_args(argv)
    sizes = Sizes(args.human, args.teacher_train, args.pool, args.dev, args.judge, args.max_side, args.min_confidence,
                  args.teacher_weight)
    if sizes.human >= sizes.teacher_train or min(sizes.human, sizes.pool, sizes.dev, sizes.judge) < 20:
        parser.error("--human must be below --teacher-train, and every set at least 20 images")
    import torch

    torch.set_num_threads(args.threads)
    began = time.monotonic()
    runs = []
    for seed in args.seeds:
        row = run_seed(args.work, seed, sizes)
        runs.append(row)
        d = row["difference_mcc"]
        say(f"seed {seed}: student {row['judge']['student']['estimate']:.3f}, student' "
            f"{row['judge']['student-taught']['estimate']:.3f}, difference {d['estimate']:+.3f} "
            f"[{d['low']:+.3f}, {d['high']:+.3f}]")
    result: dict[str, Any] = {
              "what": "student' (human + teacher labels) against student (human only), small-cnn, streets task",
              "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sizes": asdict(sizes),
              "recipe": RECIPE, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                            "torch_threads": args.threads},
              "seconds": round(time.monotonic() - began, 1), "pooled": pooled_difference(runs),
              "runs": [{k: v for k, v in row.items() if not k.startswith("_")} for row in runs]}
    command = (".venv/bin/python -m sn72_lab.teacher_experiment --seeds " + " ".join(map(str, args.seeds))
               + f" --out {args.out}" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in asdict(sizes).items()
                                                if v != getattr(defaults, k)))
    result["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "README.md").write_text(_markdown(result, command))
    p = result["pooled"]
    say(f"mean over seeds: {p['estimate']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]; {result['seconds']:.0f} s; "
        f"{args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
