#!/usr/bin/env python
"""How much more labelled data helps: `small-cnn` trained by `sn72-train` on the generated street task, per seed.

    .venv/bin/python scripts/small_cnn_curve.py --out .bench/small-cnn --seeds 0 1 2 --sizes 300 1000 \\
        --results docs/bench/cpu/2026-12-04/small-cnn/results.json

Per seed S: streets of seed S (the largest size; a smaller training set is its first N images, the same bytes
`--images N` writes), 400 of seed 100+S for early stopping (`--heldout`), 400 of seed 200+S judged here and seen by
no role of the run; a fresh `small-cnn` with init seed S. Each size is one `sn72-train` run (the command is
recorded as run); before and after, the hf_classifier expert answers both sets, decoded as the engine decodes
them. MCC uses the validators' rounding (np.round).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RECIPE = ["--epochs", "10", "--lr", "3e-3", "--batch-size", "16", "--resize", "squash"]


def judge(model: Path, folder: Path) -> dict[str, Any]:
    from sklearn.metrics import matthews_corrcoef

    from cascade.config import DecodeConfig, ExpertConfig
    from cascade.decode import decode_image
    from cascade.experts.registry import build_expert

    expert = build_expert(ExpertConfig(name="cnn", backend="hf_classifier", model=str(model), max_batch=64,
                                       device="cpu"), "cpu")
    expert.load()
    files = sorted(folder.rglob("*.jpg"))
    answers: list[float] = []
    for start in range(0, len(files), 64):
        side = expert.input_side()
        batch = [decode_image(f.read_bytes(), DecodeConfig(), side).image for f in files[start:start + 64]]
        answers += [float(p) for p in expert.predict_batch(batch)]  # type: ignore[arg-type]
    expert.close()
    labels = np.array([int(f.parent.name) for f in files])
    predicted = np.round(np.array(answers)).astype(int)
    return {"n": len(files), "accuracy": round(float((predicted == labels).mean()), 4),
            "mcc": round(float(matthews_corrcoef(labels, predicted)), 4),
            "predicted_positive_share": round(float(predicted.mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="work folder (data, models, runs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000], help="training images per run")
    parser.add_argument("--heldout", type=int, default=400, help="images of the --heldout set and of the judged set")
    parser.add_argument("--max-side", type=int, help="generate smaller images (default: full size)")
    parser.add_argument("--results", type=Path, help="write the results here (JSON)")
    args = parser.parse_args(argv)
    from sn72_lab.tiny_models import build_small_cnn
    from sn72_tools.training.streets import FULL_SIZES, make_street_folder, scaled_sizes

    sizes = scaled_sizes(args.max_side) if args.max_side else FULL_SIZES
    python = str(Path(sys.executable))
    runs: list[dict[str, Any]] = []
    generation: list[dict[str, Any]] = []
    for seed in args.seeds:
        root = args.out / f"seed{seed}"
        sets = {"train": (max(args.sizes), seed), "heldout": (args.heldout, 100 + seed),
                "judge": (args.heldout, 200 + seed)}
        for name, (images, data_seed) in sets.items():
            if not (root / name / "1").is_dir():
                began = time.monotonic()
                make_street_folder(root / name, images, data_seed, sizes)
                seconds = time.monotonic() - began
                generation.append({"set": f"seed{seed}/{name}", "images": images, "seed": data_seed,
                                   "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1)})
        model = root / "small-cnn"
        if not (model / "config.json").is_file():
            build_small_cnn(model, seed=seed)
        start = {"heldout": judge(model, root / "heldout"), "judge": judge(model, root / "judge")}
        for size in sorted(args.sizes):
            train = root / f"train{size}"
            if not train.is_dir():  # the first `size` images of the largest set: what --images size writes
                for label in (0, 1):
                    (train / str(label)).mkdir(parents=True)
                    for file in sorted((root / "train" / str(label)).glob("*.jpg")):
                        if int(file.stem.rsplit("-", 1)[1]) < size:
                            os.link(file, train / str(label) / file.name)
            out = root / f"run{size}"
            command = [python, "-m", "sn72_tools.training.cli", str(train), "--heldout", str(root / "heldout"),
                       "--model", str(model), "--out", str(out), *RECIPE, "--seed", str(seed), "--no-eval",
                       "--no-progress"]
            shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (no --overwrite: stable flags only)
            began = time.monotonic()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            wall = time.monotonic() - began
            (root / f"run{size}.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            record = json.loads((out / "model" / "sn72_train.json").read_text())
            after = {"heldout": judge(out / "model", root / "heldout"), "judge": judge(out / "model", root / "judge")}
            run = record["run"]
            row = {"seed": seed, "data_images": size, "trained_images": run.get("train_images"),
                   "epochs_run": run.get("epochs_run"), "stopped_early": run.get("stopped_early"),
                   "train_seconds": round(float(run.get("train_seconds", 0.0)), 1), "command_seconds": round(wall, 1),
                   "before": start, "after": after, "trainer_dev": run.get("trainer_dev") or run.get("trainer_heldout"),
                   "command": " ".join(command).replace(str(args.out), "$OUT").replace(python, ".venv/bin/python")}
            runs.append(row)
            before_j, after_j = start["judge"], after["judge"]
            print(f"seed {seed} size {size} (trained {row['trained_images']}): judge acc "
                  f"{before_j['accuracy']:.3f} -> {after_j['accuracy']:.3f}, MCC {before_j['mcc']:.3f} "
                  f"-> {after_j['mcc']:.3f}; heldout acc {after['heldout']['accuracy']:.3f}; "
                  f"{row['train_seconds']} s training, {row['epochs_run']} epochs", flush=True)
    summary = {}
    for size in sorted(args.sizes):
        rows = [r for r in runs if r["data_images"] == size]
        for key in ("judge", "heldout"):
            for metric in ("accuracy", "mcc"):
                values = np.array([r["after"][key][metric] for r in rows])
                summary[f"{size}/{key}/{metric}"] = {"mean": round(float(values.mean()), 4),
                                                     "min": float(values.min()), "max": float(values.max())}
    result = {"what": "small-cnn (sn72_lab/tiny_models.py) trained by sn72-train on sn72_tools/training/streets.py",
              "recipe": RECIPE, "sizes": [list(s) for s in sizes], "machine": {"cpus": os.cpu_count(),
              "platform": platform.platform(), "torch_threads": _threads()},
              "generation": generation, "runs": runs, "summary": summary}
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


if __name__ == "__main__":
    sys.exit(main())
