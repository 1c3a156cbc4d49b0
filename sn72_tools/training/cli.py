"""`sn72-train` / `python -m sn72_tools.training.cli`: fine-tune the hf_classifier expert on labelled images.

    sn72-train al-store/ --out runs/ft1                                  # the subnet's ViT-B/16
    sn72-train al-store/ roadwork-train/ --dev roadwork-dev/ --preset sn72-convnextv2 --out runs/ft2
    sn72-train --out runs/ft2 --refit --cascade config/cascade.production.yaml   # a candidate for the cascade
    sn72-train ... --out runs/ft2 --resume                               # continue from the last checkpoint

Each labelled image has one role: train; dev (early stopping: --dev, else --holdout of the data); fit (the
candidate calibration of --refit: --fit-data, else --fit-share of the data). Dev and fit are drawn only from
images the starting model never trained on (its recorded lineage); --exclude keeps images (a judge set) out of
every role. DATA and the sets take what the eval tool reads: image folders (0/ and 1/, or none/ and roadwork/),
CSV (path,label), parquet, `datasets` folders written by save_to_disk, active-learning stores (their labelled
records). The model folder (OUT/model) records its resize mode, its data lineage and a model card; the eval
tool's report before and after is in OUT/eval. Exit 3: the new model is worse than its start on the fit images
(no candidate). Flags set explicitly win over a --preset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loguru import logger
from pydantic import ValidationError

from cascade.config import format_validation_error
from sn72_tools.evaluation.datasets import KINDS
from sn72_tools.training.recipe import (
    AUGMENTATIONS,
    DEFAULT_MODEL,
    ENSEMBLES,
    PRESETS,
    REGIMES,
    Recipe,
    TrainError,
    build_recipe,
)

_RECIPE_FLAGS = ("model", "mode", "resize", "epochs", "batch_size", "eval_batch_size", "learning_rate",
                 "weight_decay", "warmup_ratio", "label_smoothing", "class_weighting", "patience", "best_metric",
                 "holdout", "fit_share", "augment", "augment_p", "precision", "seed", "workers", "focal_gamma",
                 "regime", "synthetic_share")
WORSE_THAN_START = 3  # the run finished, but its model is no candidate


def _augmentations(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; known: {', '.join(AUGMENTATIONS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sn72-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, nargs="*", help="labelled sets to train on")
    parser.add_argument("--out", type=Path, required=True, help="the run's folder (model/, checkpoints/, eval/ ...)")
    parser.add_argument("--dev", "--heldout", dest="dev", type=Path, nargs="+", default=[], metavar="DATA",
                        help="labelled sets for early stopping (default: --holdout of DATA); no image of DATA")
    parser.add_argument("--fit-data", dest="fit", type=Path, nargs="+", default=[], metavar="DATA",
                        help="labelled sets for the candidate calibration (default: --fit-share of DATA)")
    parser.add_argument("--exclude", type=Path, nargs="+", default=[], metavar="DATA",
                        help="images in no role at all (e.g. the frozen judge set of sn72-promote)")
    parser.add_argument("--format", choices=KINDS, default="auto", help="what DATA is (default: detected)")
    parser.add_argument("--split", help="split of a saved DatasetDict")
    parser.add_argument("--image-column", default="image", help="image column of parquet / datasets sets")
    parser.add_argument("--label-column", default="label", help="label column of parquet / datasets sets")
    recipe = parser.add_argument_group("recipe (defaults shown are used when no --preset sets them)")
    recipe.add_argument("--preset", choices=[*PRESETS, *ENSEMBLES],
                        help="a published recipe (docs/training.md, Presets); an ensemble preset names its members")
    recipe.add_argument("--model", help=f"hub id or local folder to start from (default {DEFAULT_MODEL})")
    recipe.add_argument("--mode", choices=["full", "probe"], help="full fine-tune (default) or linear probe")
    recipe.add_argument("--resize", choices=["squash", "letterbox", "center_crop"],
                        help="resize mode (default: the model's recorded one, else squash)")
    recipe.add_argument("--epochs", type=float, help="passes over the training images (default 3)")
    recipe.add_argument("--batch-size", type=int, help="images per step (default 32)")
    recipe.add_argument("--eval-batch-size", type=int, help="images per held-out batch (default 64)")
    recipe.add_argument("--lr", dest="learning_rate", type=float, help="peak learning rate (default 5e-5)")
    recipe.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    recipe.add_argument("--warmup", dest="warmup_ratio", type=float, help="share of steps warming up (default 0.1)")
    recipe.add_argument("--label-smoothing", type=float, help="default 0")
    recipe.add_argument("--focal-gamma", type=float, help="focal loss exponent (default 0: cross-entropy)")
    recipe.add_argument("--regime", choices=REGIMES,
                        help="validators' image condition to train for (default native: images as stored, no "
                             "augmentation; the earlier two crop or letterbox to 224, then distort)")
    recipe.add_argument("--synthetic-share", type=float,
                        help="share of each epoch's samples drawn from --synthetic (needs --synthetic)")
    recipe.add_argument("--class-weighting", action=argparse.BooleanOptionalAction, default=None,
                        help="weigh the loss by inverse class frequency (default off)")
    recipe.add_argument("--patience", type=int, help="epochs without improvement before stopping (default 3; 0: off)")
    recipe.add_argument("--best-metric", choices=["loss", "mcc"], help="held-out metric that picks the kept model")
    recipe.add_argument("--holdout", type=float, help="share for early stopping without --dev (default 0.2)")
    recipe.add_argument("--fit-share", type=float,
                        help="share kept for the calibration fit without --fit-data (default 0.2; 0: none)")
    recipe.add_argument("--augment", type=_augmentations, metavar="NAMES",
                        help=f"comma-separated distortions while training (default none): {', '.join(AUGMENTATIONS)}")
    recipe.add_argument("--augment-p", type=float, help="chance an image is distorted per epoch (default 0.5)")
    recipe.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="default auto: bf16 on CUDA")
    recipe.add_argument("--seed", type=int, help="default 0")
    recipe.add_argument("--workers", type=int, help="data-loading processes (default 0: in process)")
    parser.add_argument("--synthetic", type=Path, metavar="DIR",
                        help="generated images (0/ + 1/) that train only, never dev or fit (with --synthetic-share)")
    parser.add_argument("--teacher-labels", dest="teacher_stores", type=Path, nargs="*", metavar="STORE",
                        help="also train on the teacher labels (sn72-al teach) of these active-learning stores (none "
                             "named: the stores among DATA), weighted, in the train role only")
    parser.add_argument("--teacher-weight", type=float, default=0.5,
                        help="per-sample loss weight of a teacher label, in (0, 1] (default 0.5; a person's is 1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train")
    parser.add_argument("--resume", action="store_true", help="continue OUT's run from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds an earlier run")
    parser.add_argument("--no-eval", action="store_true", help="skip the eval tool's before/after report")
    parser.add_argument("--refit", action="store_true",
                        help="then make a candidate: --cascade with OUT/model and a calibration fitted on the fit set")
    parser.add_argument("--cascade", type=Path, help="the served cascade YAML (for --refit; it is not changed)")
    parser.add_argument("--expert", help="the expert of --cascade that OUT/model replaces (default: the one serving "
                                         "the run's base model, or the only hf_classifier)")
    parser.add_argument("--refit-data", type=Path, help="labelled set to fit the candidate on (default OUT/fit)")
    parser.add_argument("--min-fit-images", type=int, default=200,
                        help="refuse to fit the candidate on fewer images (default 200)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _recipe(args: argparse.Namespace) -> Recipe:
    try:
        return build_recipe(args.preset, {name: getattr(args, name) for name in _RECIPE_FLAGS})
    except ValidationError as exc:
        raise TrainError("bad recipe: " + "; ".join(format_validation_error(exc).splitlines())) from exc


def run(args: argparse.Namespace) -> list[str]:
    """Train (when DATA is given) and make a candidate (when asked); the lines to print."""
    from sn72_tools.training.refit import NotACandidate

    lines: list[str] = []
    seed = args.seed or 0
    if args.data:
        from sn72_tools.training.run import Inputs, train

        recipe = _recipe(args)
        seed = recipe.seed
        inputs = Inputs(data=args.data, out=args.out, dev=args.dev, fit=args.fit, exclude=args.exclude,
                        synthetic=args.synthetic, kind=args.format, split=args.split,
                        image_column=args.image_column, label_column=args.label_column, device=args.device,
                        resume=args.resume,
                        overwrite=args.overwrite, judge=not args.no_eval, progress=not args.no_progress,
                        teacher_stores=args.teacher_stores, teacher_weight=args.teacher_weight)
        outcome = train(recipe, inputs)
        lines += outcome.lines
        if outcome.worse:
            raise NotACandidate("\n".join(lines))
    if args.refit:
        from sn72_tools.training.refit import refit

        lines += refit(args.out, args.cascade, args.refit_data, expert=args.expert, seed=seed,
                       progress=not args.no_progress, min_fit_images=args.min_fit_images)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.data and not args.refit:
        parser.error("give labelled DATA to train on (or --refit to refit the cascade serving OUT/model)")
    if args.refit and args.cascade is None:
        parser.error("--refit needs --cascade C (the cascade YAML that serves OUT/model)")
    if not args.data and (args.resume or args.dev or args.fit or args.exclude):
        parser.error("--resume, --dev, --fit-data and --exclude need the DATA of the run")
    if not 0.0 < args.teacher_weight <= 1.0:
        parser.error(f"--teacher-weight must lie in (0, 1] (a teacher label never outweighs a person's), got "
                     f"{args.teacher_weight}")
    logger.remove()
    logger.add(sys.stderr, level="INFO")  # loading the model and reading the data come before any progress bar
    if args.no_progress:
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()  # transformers' and the hub's own bars (loading weights, writing shards)
    from sn72_tools.training.refit import NotACandidate

    try:
        lines = run(args)
    except NotACandidate as exc:
        print(str(exc))
        return WORSE_THAN_START
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, an unwritable OUT
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: continue with the same command and --resume (checkpoints in {args.out}/checkpoints)",
              file=sys.stderr)
        return 130
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
